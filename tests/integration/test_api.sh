#!/usr/bin/env bash
# REST API against a real scheduler and Postgres: every route with good and
# bad input (400 with a reason, 404, 405, 409, 413), pagination bounds, the
# JWT auth matrix (missing, malformed, wrong secret, expired, no exp,
# alg none, HS512, RS256, forged role, readonly on POST, operator, admin),
# `btl token`, public_reads and an empty secret (switched by config reload),
# and proto/openapi.yaml against what is served: the spec's path+method list
# must equal the route table in api.c plus the built-in probes, and every
# spec route must answer (not 404/405) live.
source "$(dirname "$0")/lib.sh"
btl_setup

SECRET="api-test-secret-$RANDOM-$RANDOM-0123456789abcdef"
export BTL_JWT_SECRET="$SECRET"
# conf SECRET_TEXT PUBLIC_READS: the config file (the running scheduler's
# environment is fixed, so later phases write literal values and reload).
conf() {
    write_config "$T/btl.yaml" <<EOF2
api: { jwt_secret: "$1", public_reads: $2 }
EOF2
    cat >>"$T/btl.yaml" <<'EOF2'
scheduler: { check_interval: 200ms }
tasks:
  alpha:
    service: generator
    schedule: "once 2099-01-01T00:00:00Z"
    job: noop
  beta:
    service: curator
    schedule: "once 2099-01-01T00:00:00Z"
    job: noop
EOF2
}
conf '${BTL_JWT_SECRET}' false
BASE="http://127.0.0.1:$HTTP_SCHED"
MINT="$BTL_BUILD/jwt_mint"

start scheduler btl-scheduler --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_SCHED" --instance api-a
check "scheduler ready" wait_for "ready" 30 http_ok "$HTTP_SCHED" /health/ready
check "tasks synced" wait_for "tasks" 20 sql_eq "SELECT count(*) FROM tasks" 2
check "no empty-secret warning with a secret" bash -c "! grep -q 'jwt_secret is empty' '$T/scheduler.log'"

# call METHOD PATH [TOKEN] [BODY]: sets CODE and BODY (response body text).
call() {
    local m=$1 p=$2 tok=${3:-} data=${4-}
    local args=(-s -o "$T/resp" -w '%{http_code}' --max-time 10 -X "$m")
    [ -n "$tok" ] && args+=(-H "Authorization: Bearer $tok")
    [ -n "$data" ] && args+=(-H 'Content-Type: application/json' --data-binary "$data")
    CODE=$(curl "${args[@]}" "$BASE$p") || CODE=000
    BODY=$(cat "$T/resp" 2>/dev/null || true)
}
# expect DESC WANT_CODE METHOD PATH [TOKEN] [BODY]
expect() {
    local desc=$1 want=$2; shift 2
    call "$@"
    if [ "$CODE" = "$want" ]; then pass "$desc ($CODE)"; else fail "$desc: want $want, got $CODE: $BODY"; fi
}
# jq_is FILTER VALUE: the last response's JSON FILTER equals VALUE.
jq_is() { [ "$(jq -r "$1" <<<"$BODY" 2>/dev/null)" = "$2" ]; }
has_reason() { jq -e '.error | type == "string" and length > 0' <<<"$BODY" >/dev/null; }

# ---- tokens --------------------------------------------------------------
OP=$("$BTL_BUILD/btl" token --config "$T/btl.yaml" --role operator --ttl 1h --sub alice)
check "btl token prints a JWT" bash -c "[[ '$OP' =~ ^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$ ]]"
RO=$("$BTL_BUILD/btl" token --config "$T/btl.yaml" --role readonly --ttl 10m)
ADMIN=$("$MINT" sign HS256 "$SECRET" '{"sub":"root","role":"admin","exp_in":600}')
EXPIRED=$("$MINT" sign HS256 "$SECRET" '{"sub":"x","role":"admin","exp_in":-5}')
NOEXP=$("$MINT" sign HS256 "$SECRET" '{"sub":"x","role":"admin"}')
NOSUB=$("$MINT" sign HS256 "$SECRET" '{"role":"admin","exp_in":600}')
BADROLE=$("$MINT" sign HS256 "$SECRET" '{"sub":"x","role":"root","exp_in":600}')
NBF=$("$MINT" sign HS256 "$SECRET" '{"sub":"x","role":"admin","exp_in":600,"nbf":4102444800}')
WRONG=$("$MINT" sign HS256 "wrong-$SECRET" '{"sub":"x","role":"admin","exp_in":600}')
NONE=$("$MINT" sign none "" '{"sub":"x","role":"admin","exp_in":600}')
HS512=$("$MINT" sign HS512 "$SECRET" '{"sub":"x","role":"admin","exp_in":600}')
RS256=$("$MINT" raw '{"alg":"RS256","typ":"JWT"}' "{\"sub\":\"x\",\"role\":\"admin\",\"exp\":$(( $(date +%s) + 600 ))}")
FORGED=$("$MINT" forge "$RO" role admin)
check "forged token differs only in the payload" bash -c "[ '${FORGED%%.*}' = '${RO%%.*}' ] && [ '${FORGED##*.}' = '${RO##*.}' ] && [ '$FORGED' != '$RO' ]"

check "btl token refuses a bad role (exit 2)" bash -c "'$BTL_BUILD/btl' token --config '$T/btl.yaml' --role root --ttl 1h >/dev/null 2>&1; [ \$? -eq 2 ]"
check "btl token refuses a bad ttl (exit 2)" bash -c "'$BTL_BUILD/btl' token --config '$T/btl.yaml' --role admin --ttl soon >/dev/null 2>&1; [ \$? -eq 2 ]"
check "btl token with an empty secret exits 1" bash -c "BTL_JWT_SECRET= '$BTL_BUILD/btl' token --config '$T/btl.yaml' --role admin --ttl 1h >$T/tok.out 2>$T/tok.err; [ \$? -eq 1 ] && [ ! -s $T/tok.out ] && grep -q jwt_secret $T/tok.err"

# ---- auth matrix on a POST -----------------------------------------------
P=/api/v1/tasks/alpha/pause
expect "POST without token" 401 POST $P
check "401 gives a reason" has_reason
WWWA=$(curl -s -o /dev/null -D - -X POST "$BASE$P" | tr -d '\r' | grep -ci '^www-authenticate: bearer' || true)
check "401 carries WWW-Authenticate: Bearer" test "${WWWA:-0}" -ge 1
ALLOW=$(curl -s -o /dev/null -D - -X GET "$BASE/api/v1/tasks/x/pause" | tr -d '\r' | grep -i '^allow:' || true)
check "405 on a POST-only route says Allow: POST ($ALLOW)" grep -qi '^allow: POST$' <<<"$ALLOW"
check "POST with Basic scheme → 401" bash -c "[ \$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Authorization: Basic YTpi' '$BASE$P') = 401 ]"
expect "malformed token" 401 POST $P "not-a-jwt"
expect "two-part token" 401 POST $P "abc.def"
expect "garbage characters" 401 POST $P 'a!b.c$d.e%f'
expect "wrong secret" 401 POST $P "$WRONG"
expect "expired" 401 POST $P "$EXPIRED"
check "expired reason says so" bash -c "grep -q expired <<<'$BODY'"
expect "no exp claim" 401 POST $P "$NOEXP"
expect "no sub claim" 401 POST $P "$NOSUB"
expect "unknown role" 401 POST $P "$BADROLE"
expect "nbf in the future" 401 POST $P "$NBF"
expect "alg none" 401 POST $P "$NONE"
expect "alg HS512 (right secret)" 401 POST $P "$HS512"
check "HS512 reason names the algorithm" bash -c "grep -q HS256 <<<'$BODY'"
expect "alg RS256" 401 POST $P "$RS256"
expect "forged role claim (bad signature)" 401 POST $P "$FORGED"
expect "readonly may not POST" 403 POST $P "$RO"
check "403 gives a reason" has_reason
check "nothing paused by refused requests" sql_eq "SELECT is_paused FROM tasks WHERE task_id='alpha'" f
expect "operator (btl token) may POST" 200 POST $P "$OP"
check "pause reached the database" sql_eq "SELECT is_paused FROM tasks WHERE task_id='alpha'" t
expect "admin may POST" 200 POST /api/v1/tasks/alpha/resume "$ADMIN"
check "resume reached the database" sql_eq "SELECT is_paused FROM tasks WHERE task_id='alpha'" f
expect "reads need a token when public_reads is false" 401 GET /api/v1/tasks
check "lowercase bearer accepted" bash -c "[ \$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: bearer $RO' '$BASE/api/v1/tasks') = 200 ]"
expect "readonly may read" 200 GET /api/v1/tasks "$RO"
expect "expired token may not read" 401 GET /api/v1/tasks "$EXPIRED"
expect "alg none may not read" 401 GET /api/v1/tasks "$NONE"
LONG=$(head -c 5000 /dev/zero | tr '\0' a)
expect "oversized token" 401 GET /api/v1/tasks "$LONG.$LONG.$LONG"

# ---- tasks -----------------------------------------------------------------
expect "GET tasks" 200 GET /api/v1/tasks "$RO"
check "tasks lists alpha and beta" jq_is '[.tasks[].task_id] | join(",")' "alpha,beta"
check "tasks carry run state" jq_is '.tasks[0] | [has("next_run"), has("circuit_state"), has("consecutive_failures"), .configured] | all' true
expect "GET one task" 200 GET /api/v1/tasks/beta "$RO"
check "one task is beta" jq_is '.task_id + " " + .service' "beta curator"
expect "unknown task" 404 GET /api/v1/tasks/nope "$RO"
check "404 gives a reason" has_reason
expect "impossible task name" 404 GET "/api/v1/tasks/a%20b" "$RO"
expect "overlong task name" 404 GET "/api/v1/tasks/$(head -c 300 /dev/zero | tr '\0' t)" "$RO"
expect "pause twice is idempotent" 200 POST /api/v1/tasks/beta/pause "$OP"
expect "pause twice is idempotent (2)" 200 POST /api/v1/tasks/beta/pause "$OP"
check "pause answer" jq_is '.paused' true
expect "resume a running task is fine" 200 POST /api/v1/tasks/alpha/resume "$OP"
expect "pause unknown task" 404 POST /api/v1/tasks/nope/pause "$OP"
expect "resume unknown task" 404 POST /api/v1/tasks/nope/resume "$OP"
expect "trigger" 202 POST /api/v1/tasks/alpha/trigger "$OP"
RUN=$(jq -r .run_id <<<"$BODY")
check "trigger returns a run id" bash -c "[[ '$RUN' =~ ^[0-9]+$ ]] && [ '$RUN' -gt 0 ]"
check "trigger recorded a manual run" sql_eq "SELECT task_id || ' ' || reason FROM task_runs WHERE run_id = ${RUN:-0}" "alpha manual"
expect "trigger unknown task" 404 POST /api/v1/tasks/nope/trigger "$OP"

# ---- executions (rows written directly: no workers in this test) -----------
sql "INSERT INTO executions (task_id, run_id, service, instance, trigger, started_at, completed_at, success, error_message, items_ok, items_failed, items_skipped, metadata)
     SELECT 'alpha', NULL, 'generator', 'w1', 'manual', now() - (g || ' min')::interval, now() - (g || ' min')::interval + interval '2 s', g % 2 = 0, CASE WHEN g % 2 = 1 THEN 'boom ' || g END, g, 0, 0, '{\"k\":1}'
     FROM generate_series(1, 3) g;
     INSERT INTO executions (task_id, service, instance, trigger, started_at, completed_at, success, items_ok, items_failed, items_skipped)
     VALUES ('beta', 'curator', 'w2', 'scheduled', now() - interval '1 h', now(), true, 1, 0, 0)"
EX1=$(sql "SELECT id FROM executions WHERE task_id='alpha' ORDER BY started_at DESC LIMIT 1")
expect "history" 200 GET /api/v1/tasks/alpha/history "$RO"
check "history pages alpha only, newest first" jq_is '[.total, (.executions | length), .executions[0].id, (.executions | map(.task_id) | unique | join(","))] | map(tostring) | join(" ")' "3 3 $EX1 alpha"
check "history has durations and errors" jq_is '.executions[0].duration_ms == 2000 and .executions[0].error_message == "boom 1"' true
expect "history limit=2" 200 GET "/api/v1/tasks/alpha/history?limit=2" "$RO"
check "limit=2 gives 2" jq_is '(.executions | length | tostring) + " " + (.limit | tostring)' "2 2"
expect "history offset=2" 200 GET "/api/v1/tasks/alpha/history?limit=2&offset=2" "$RO"
check "offset=2 gives the last one" jq_is '.executions | length' 1
expect "history of unknown task" 404 GET /api/v1/tasks/nope/history "$RO"
for q in limit=0 limit=501 limit=abc limit= "limit=1e3" offset=-1 offset=x "offset=99999999999"; do
    expect "history bad page ?$q" 400 GET "/api/v1/tasks/alpha/history?$q" "$RO"
    check "400 reason for ?$q" has_reason
done
expect "executions" 200 GET /api/v1/executions "$RO"
check "executions total and default limit" jq_is '"\(.total) \(.limit) \(.offset) \(.executions | length)"' "4 50 0 4"
expect "executions limit=500" 200 GET "/api/v1/executions?limit=500" "$RO"
expect "executions limit=501" 400 GET "/api/v1/executions?limit=501" "$RO"
expect "executions offset past the end" 200 GET "/api/v1/executions?offset=100" "$RO"
check "past the end is empty with the total" jq_is '"\(.total) \(.executions | length)"' "4 0"
expect "one execution" 200 GET "/api/v1/executions/$EX1" "$RO"
check "one execution has metadata" jq_is '"\(.id) \(.metadata.k)"' "$EX1 1"
expect "unknown execution" 404 GET /api/v1/executions/987654321 "$RO"
expect "non-numeric execution id" 400 GET /api/v1/executions/abc "$RO"
expect "zero execution id" 400 GET /api/v1/executions/0 "$RO"
expect "overflowing execution id" 400 GET /api/v1/executions/99999999999999999999 "$RO"

# ---- posts -------------------------------------------------------------------
sql "INSERT INTO posts (content_hash, body, narrative, angle, status, score) VALUES
     ('h1', 'first pending', 'n', 'feature', 'pending', 50), ('h2', 'second pending', 'n', 'usecase', 'pending', 40),
     ('h3', 'already out', 'n', 'tutorial', 'posted', 70), ('h4', E'quote \" and \\\\ and\nnewline', 'n', 'community', 'pending', NULL)"
P1=$(sql "SELECT id FROM posts WHERE content_hash='h1'"); P2=$(sql "SELECT id FROM posts WHERE content_hash='h2'")
P3=$(sql "SELECT id FROM posts WHERE content_hash='h3'"); P4=$(sql "SELECT id FROM posts WHERE content_hash='h4'")
expect "posts" 200 GET /api/v1/posts "$RO"
check "posts total and counts" jq_is '"\(.total) \(.counts.pending) \(.counts.posted) \(.counts.unknown)"' "4 3 1 0"
check "posts body round-trips escapes" jq_is ".posts[] | select(.id == $P4) | .body" $'quote " and \\ and\nnewline'
expect "posts?status=pending" 200 GET "/api/v1/posts?status=pending&limit=2" "$RO"
check "pending page" jq_is '"\(.total) \(.posts | length) \(.posts | map(.status) | unique | join(","))"' "3 2 pending"
expect "posts?status=bogus" 400 GET "/api/v1/posts?status=bogus" "$RO"
check "status 400 lists the enum" bash -c "grep -q 'pending, approved' <<<'$BODY'"
expect "posts?limit=0" 400 GET "/api/v1/posts?limit=0" "$RO"
expect "approve pending" 200 POST "/api/v1/posts/$P1/approve" "$OP"
check "approve answer" jq_is '.status' approved
check "approved in the database" sql_eq "SELECT status FROM posts WHERE id=$P1" approved
expect "approve approved → 409" 409 POST "/api/v1/posts/$P1/approve" "$OP"
check "409 names the status" jq_is '.status' approved
expect "approve posted → 409" 409 POST "/api/v1/posts/$P3/approve" "$OP"
expect "reject posted → 409" 409 POST "/api/v1/posts/$P3/reject" "$OP"
expect "reject approved with reason" 200 POST "/api/v1/posts/$P1/reject" "$OP" '{"reason":"off-brand"}'
check "reason stored" sql_eq "SELECT status || ' ' || reject_reason FROM posts WHERE id=$P1" "rejected off-brand"
expect "reject rejected → 409" 409 POST "/api/v1/posts/$P1/reject" "$OP"
expect "reject without body" 200 POST "/api/v1/posts/$P2/reject" "$OP"
check "default reason" sql_eq "SELECT reject_reason FROM posts WHERE id=$P2" "rejected by operator"
expect "reject with bad JSON" 400 POST "/api/v1/posts/$P4/reject" "$OP" '{"reason":'
expect "reject with non-object" 400 POST "/api/v1/posts/$P4/reject" "$OP" '"why"'
expect "reject with numeric reason" 400 POST "/api/v1/posts/$P4/reject" "$OP" '{"reason":5}'
expect "reject with empty reason" 400 POST "/api/v1/posts/$P4/reject" "$OP" '{"reason":""}'
expect "reject with 1001-byte reason" 400 POST "/api/v1/posts/$P4/reject" "$OP" "{\"reason\":\"$(head -c 1001 /dev/zero | tr '\0' r)\"}"
check "bad bodies changed nothing" sql_eq "SELECT status FROM posts WHERE id=$P4" pending
expect "approve unknown post" 404 POST /api/v1/posts/987654321/approve "$OP"
expect "reject unknown post" 404 POST /api/v1/posts/987654321/reject "$OP"
expect "approve non-numeric id" 400 POST /api/v1/posts/abc/approve "$OP"
expect "readonly may not approve" 403 POST "/api/v1/posts/$P4/approve" "$RO"
head -c 70000 /dev/zero | tr '\0' x >"$T/big"
check "body over 64 KiB → 413" bash -c "[ \$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Authorization: Bearer $OP' --data-binary @$T/big '$BASE/api/v1/posts/$P4/reject') = 413 ]"
check "chunked body over 64 KiB → 413" bash -c "[ \$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Transfer-Encoding: chunked' -H 'Authorization: Bearer $OP' --data-binary @$T/big '$BASE/api/v1/posts/$P4/reject') = 413 ]"
check "oversized bodies changed nothing" sql_eq "SELECT status FROM posts WHERE id=$P4" pending

# ---- state -----------------------------------------------------------------------
sql "INSERT INTO narrative_state (key, value) VALUES ('app.one', '{\"a\": 1}'), ('app.two', '[1, 2]'), ('apps', '\"x\"'), ('zed', 'null')"
expect "state?prefix=app" 200 GET "/api/v1/state?prefix=app" "$RO"
check "prefix is hierarchical" jq_is '[.items[].key] | join(",")' "app.one,app.two"
check "values are JSON" jq_is '.items[0].value.a' 1
expect "state (all)" 200 GET /api/v1/state "$RO"
check "all keys" jq_is '.items | length' 4
expect "state limit/offset" 200 GET "/api/v1/state?limit=1&offset=1" "$RO"
check "second key" jq_is '.items[0].key' app.two
expect "state bad prefix" 400 GET "/api/v1/state?prefix=a..b" "$RO"
expect "state prefix with space" 400 GET "/api/v1/state?prefix=a%20b" "$RO"
expect "state offset+limit too big" 400 GET "/api/v1/state?offset=9999&limit=2" "$RO"

# ---- routing ------------------------------------------------------------------
expect "unknown api route" 404 GET /api/v1/nope "$ADMIN"
expect "trailing slash" 404 GET /api/v1/tasks/ "$ADMIN"
expect "extra segment" 404 POST /api/v1/tasks/alpha/pause/now "$ADMIN"
expect "other version" 404 GET /api/v2/tasks "$ADMIN"
expect "GET on a POST route" 405 GET /api/v1/tasks/alpha/pause "$ADMIN"
expect "POST on a GET route" 405 POST /api/v1/tasks "$ADMIN"
expect "DELETE" 405 DELETE /api/v1/tasks/alpha "$ADMIN"
expect "non-api path" 404 GET /nope "$ADMIN"

# ---- spec vs served routes ------------------------------------------------------
spec_routes() {
    awk '/^paths:/ {in_p = 1; next} in_p && /^[^ ]/ {in_p = 0}
         in_p && /^  \/[^ ]*:$/ {p = $1; sub(/:$/, "", p)}
         in_p && /^    (get|post|put|delete|patch):/ {m = $1; sub(/:$/, "", m); print toupper(m), p}' \
        "$BTL_SRC/proto/openapi.yaml" | sort
}
table_routes() {
    { sed -n 's/^ *{"\(GET\|POST\)", "\(\/api\/v1[^"]*\)",.*/\1 \2/p' "$BTL_SRC/services/scheduler/api.c"
      printf 'GET %s\n' /health/live /health/ready /health/startup /metrics; } | sort
}
spec_routes >"$T/spec.routes"; table_routes >"$T/table.routes"
check "spec has the routes" test "$(wc -l <"$T/spec.routes")" -ge 17
check "spec routes == api.c table + probes" diff "$T/spec.routes" "$T/table.routes"
while read -r m p; do
    case "$p" in
    /api/v1/executions/*) p=${p/\{id\}/$EX1} ;;
    /api/v1/posts/*) p=${p/\{id\}/$P4} ;;
    *) p=${p/\{id\}/beta} ;;
    esac
    call "$m" "$p" "$ADMIN"
    if [ "$CODE" != 404 ] && [ "$CODE" != 405 ] && [ "$CODE" != 000 ] && [ "$CODE" -lt 500 ]; then
        pass "spec route $m $p served ($CODE)"
    else
        fail "spec route $m $p: $CODE $BODY"
    fi
done <"$T/spec.routes"

# ---- config: reload, public reads, empty secret ---------------------------------
expect "reload" 202 POST /api/v1/config/reload "$OP"
check "reload applied" wait_for "reloaded" 10 grep -q 'configuration reloaded' "$T/scheduler.log"
cp "$T/btl.yaml" "$T/btl.yaml.good"
printf 'tasks: [\n' >>"$T/btl.yaml"
expect "reload of a broken file → 422" 422 POST /api/v1/config/reload "$OP"
check "422 names the file" bash -c "grep -q 'btl.yaml' <<<'$BODY'"
cp "$T/btl.yaml.good" "$T/btl.yaml"

conf '${BTL_JWT_SECRET}' true
expect "reload with public_reads" 202 POST /api/v1/config/reload "$OP"
check "reads become public" wait_for "public" 10 bash -c "[ \$(curl -s -o /dev/null -w '%{http_code}' '$BASE/api/v1/tasks') = 200 ]"
expect "public read ignores a bad token" 200 GET /api/v1/posts "$WRONG"
expect "POST still needs a token" 401 POST /api/v1/tasks/alpha/pause
expect "POST still refuses readonly" 403 POST /api/v1/tasks/alpha/pause "$RO"

conf '' true
expect "reload with an empty secret" 202 POST /api/v1/config/reload "$OP"
check "empty secret refuses every POST" wait_for "no secret" 10 bash -c "[ \$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Authorization: Bearer $ADMIN' '$BASE/api/v1/tasks/alpha/pause') = 401 ]"
check "empty-secret 401 says why" bash -c "curl -s -X POST -H 'Authorization: Bearer $OP' '$BASE/api/v1/config/reload' | grep -q jwt_secret"
expect "public reads still work" 200 GET /api/v1/tasks
conf '' false
kill -HUP "$(pid_of scheduler)"
check "without public_reads and secret, reads are refused too" wait_for "closed" 10 bash -c "[ \$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer $ADMIN' '$BASE/api/v1/tasks') = 401 ]"

# Restart with the empty secret: the startup log says why POSTs fail.
stop_wait scheduler
check "scheduler stops cleanly" test "$STOP_STATUS" = 0
start scheduler2 btl-scheduler --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_SCHED" --instance api-b
check "restarted" wait_for "ready" 30 http_ok "$HTTP_SCHED" /health/ready
check "startup warns about the empty secret" grep -q 'api.jwt_secret is empty: every POST is refused (401)' "$T/scheduler2.log"
expect "POST refused after restart" 401 POST /api/v1/tasks/alpha/pause "$ADMIN"

check "metrics count API requests by route" bash -c "curl -s '$BASE/metrics' | grep -q 'btl_http_requests_total{route=\"/api/v1/tasks/{id}/pause\",code=\"401\"}'"
check "the secret never reaches a log" bash -c "! grep -rqF '$SECRET' '$T'/*.log"
stop_wait scheduler2
check "scheduler2 stops cleanly" test "$STOP_STATUS" = 0
finish
