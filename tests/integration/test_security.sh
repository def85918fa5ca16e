#!/usr/bin/env bash
# Security against the real stack (Postgres, scheduler with api.jwt_secret,
# generator, curator, poster, fake LLM, fake Discord). What test_api.sh,
# test_state.sh and test_poster.sh already cover (the JWT matrix, 413 bodies,
# key syntax) is not repeated here.
#  (1) Injection: hostile API query params and ids, `btl state` keys with
#      quotes/%/_ and control-socket task names with quotes/semicolons are
#      refused or taken literally; row counts and checksums of posts, tasks,
#      narrative_state (and counts of jobs, task_runs, executions) are the
#      same before and after.
#  (2) Secrets: a short pipeline with distinctive secret values, including
#      failing calls (LLM 401, Discord 401 and 403) so the error paths run;
#      then no service log, /metrics page, API response or control reply
#      holds any of the three secret values.
#  (3) HTTP abuse: a request trickled one byte per 100 ms and 300 idle
#      connections from one other address (at most 64 kept) while
#      /health/live and an API GET must answer within 2 s;
#      the server closes the idle connections by its own timeout; a header
#      over 64 KiB gets 431/413 and the server keeps serving.
export BTL_LOG=debug # the most talkative logs are the ones that could leak
source "$(dirname "$0")/lib.sh"
btl_setup

export DISCORD_TOKEN=sekrit-discord-XYZ LLM_API_KEY=sekrit-llm-XYZ BTL_JWT_SECRET=sekrit-jwt-XYZ
SECRETS=("$DISCORD_TOKEN" "$LLM_API_KEY" "$BTL_JWT_SECRET")
CAROUSEL="$BTL_SRC/config/narratives/generation_carousel.yaml"
export POSTING_CHANNEL_ID=556677889900112233 CAROUSEL
LLM_PORT=$(free_port)
DISCORD_PORT=$(free_port)
export LLM_PORT DISCORD_PORT
BASE="http://127.0.0.1:$HTTP_SCHED"
BTL="$BTL_BUILD/btl"
export BTL_CONFIG="$T/btl.yaml"
mkdir -p "$T/resp"

# The first two LLM calls and the first two Discord calls fail.
start fake_llm fake_llm --port "$LLM_PORT" --record "$T/llm.jsonl" --fail-first 2 --fail-status 401
printf '401\n403 50013\n' >"$T/dscript"
start fake_discord fake_discord --port "$DISCORD_PORT" --record "$T/discord.jsonl" \
    --script "$T/dscript" --token "$DISCORD_TOKEN"
check "fake LLM listening" wait_for "fake_llm" 20 grep -q "^listening $LLM_PORT" "$T/fake_llm.log"
check "fake Discord listening" wait_for "fake_discord" 20 grep -q "^listening $DISCORD_PORT" "$T/fake_discord.log"

# Nothing fires by itself: the checksums of phase (1) must not move.
write_config "$T/btl.yaml" <<'EOF'
api: { jwt_secret: "${BTL_JWT_SECRET}" }
scheduler: { check_interval: 200ms, failover: 2s, max_consecutive_failures: 1000 }
worker: { concurrency: 2, lease: 20s, poll_fallback: 300ms, batch_size: 2 }
providers:
  llm: { kind: openai, base_url: "http://127.0.0.1:${LLM_PORT}/v1", model: fake-model, api_key_env: LLM_API_KEY, timeout: 10s }
platforms:
  discord: { api_base: "http://127.0.0.1:${DISCORD_PORT}/api/v10", token_env: DISCORD_TOKEN, channel_id: "${POSTING_CHANNEL_ID}" }
tasks:
  generation:
    service: generator
    schedule: "once 2099-01-01T00:00:00Z"
    narrative: "${CAROUSEL}"
    iterations: 1
  curation:
    service: curator
    schedule: "once 2099-01-01T00:00:00Z"
    execution: { strategy: drain_queue, max_retries: 1 }
    curation: { mode: auto, select_top: 2, min_score: 5, batch_size: 5, on_event: false }
  posting:
    service: poster
    schedule: "once 2099-01-01T00:00:00Z"
    platform: discord
    execution: { max_retries: 0 }
EOF
start scheduler btl-scheduler --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_SCHED" --instance sched-1
start generator btl-generator --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_GEN" --instance gen-1
start curator btl-curator --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_CUR" --instance cur-1
start poster btl-poster --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_POST" --instance post-1
for p in $HTTP_SCHED $HTTP_GEN $HTTP_CUR $HTTP_POST; do
    check "ready on :$p" wait_for "ready :$p" 30 http_ok "$p" /health/ready
done
check "tasks synced" wait_for "tasks" 20 sql_eq "SELECT count(*) FROM tasks" 3

OP=$("$BTL" token --role operator --ttl 1h --sub sec-op)
RO=$("$BTL" token --role readonly --ttl 1h --sub sec-ro)
BAD=$("$BTL_BUILD/jwt_mint" sign HS256 "not-the-secret" '{"sub":"x","role":"admin","exp_in":600}')

# call METHOD PATH [TOKEN] [CURL ARGS...]: sets CODE; the body is kept in
# $T/resp/N (all of them are grepped for secrets in phase 2).
NRESP=0
call() {
    local m=$1 p=$2 tok=${3:-}; shift 3 || shift $#
    local args=(-s --path-as-is -o "$T/resp/$NRESP" -w '%{http_code}' --max-time 10 -X "$m")
    [ -n "$tok" ] && args+=(-H "Authorization: Bearer $tok")
    CODE=$(curl "${args[@]}" "$@" "$BASE$p") || CODE=000
    BODY=$(cat "$T/resp/$NRESP" 2>/dev/null || true)
    NRESP=$((NRESP + 1))
}
# refused DESC METHOD PATH [TOKEN]: 400 or 404 (never 2xx, never 5xx).
refused() {
    local desc=$1; shift
    call "$@"
    case "$CODE" in
    400 | 404) pass "$desc ($CODE)" ;;
    *) fail "$desc: want 400/404, got $CODE: $(head -c 300 <<<"$BODY")" ;;
    esac
}

# ============================================================================
# (1) Injection
# ============================================================================
sql "INSERT INTO posts (content_hash, body, narrative, angle, status, score) VALUES
       ('s1', 'pending one', 'n', 'feature', 'pending', 30),
       ('s2', E'it''s \"quoted\"; DROP TABLE posts;--', 'n', 'usecase', 'pending', 20),
       ('s3', 'rejected one', 'n', 'tutorial', 'rejected', 5)"
sql "INSERT INTO narrative_state (key, value) VALUES ('ab', '1'), ('ab.c', '2'), ('axb', '3'), ('keep.me', '\"v\"')"
snapshot() {
    sql "SELECT concat_ws(' ',
      (SELECT count(*) FROM posts), (SELECT md5(coalesce(string_agg(p::text, '|' ORDER BY id), '')) FROM posts p),
      (SELECT count(*) FROM tasks),
      (SELECT md5(coalesce(string_agg(concat_ws(',', task_id, service, schedule, is_paused, paused_reason,
                                                consecutive_failures, circuit_state, next_run), '|' ORDER BY task_id), ''))
         FROM tasks),
      (SELECT count(*) FROM narrative_state), (SELECT md5(coalesce(string_agg(s::text, '|' ORDER BY key), '')) FROM narrative_state s),
      (SELECT count(*) FROM jobs), (SELECT count(*) FROM task_runs), (SELECT count(*) FROM executions))"
}
SNAP0=$(snapshot)
log "snapshot before: $SNAP0"

# ---- API query parameters and ids ------------------------------------------------
refused "status='; DROP TABLE posts;--" GET "/api/v1/posts?status=%27%3B%20DROP%20TABLE%20posts%3B--" "$RO"
refused "status=pending' OR '1'='1" GET "/api/v1/posts?status=pending%27%20OR%20%271%27%3D%271" "$RO"
refused "status with NUL" GET "/api/v1/posts?status=pending%00x" "$RO"
refused "prefix=%_'\"" GET "/api/v1/state?prefix=%25_%27%22" "$RO"
refused "prefix=' OR 1=1--" GET "/api/v1/state?prefix=%27%20OR%201%3D1--" "$RO"
# A prefix the key syntax allows is taken literally, never as a LIKE pattern.
call GET "/api/v1/state?prefix=a_" "$RO"
case "$CODE" in
400) pass "prefix=a_ refused (400)" ;;
200) check "prefix=a_ is literal (no ab, ab.c, axb)" \
    bash -c "[ \"\$(jq -r '[.items[].key] | map(select(. == \"ab\" or . == \"ab.c\" or . == \"axb\")) | length' '$T/resp/$((NRESP - 1))')\" = 0 ]" ;;
*) fail "prefix=a_: got $CODE: $BODY" ;;
esac
for q in "limit=99999999999999999999" "offset=99999999999999999999" "limit=-1" "offset=-5" \
    "limit=-9223372036854775808" "limit=1%20OR%201%3D1" "offset=0%3BDELETE%20FROM%20posts" "limit=0x10" "limit=%2B5%27"; do
    refused "posts?$q" GET "/api/v1/posts?$q" "$RO"
    refused "executions?$q" GET "/api/v1/executions?$q" "$RO"
    refused "state?$q" GET "/api/v1/state?$q" "$RO"
    refused "history?$q" GET "/api/v1/tasks/generation/history?$q" "$RO"
done
refused "execution id 1 OR 1=1" GET "/api/v1/executions/1%20OR%201%3D1" "$RO"
refused "execution id -1" GET "/api/v1/executions/-1" "$RO"
refused "execution id 1;DROP" GET "/api/v1/executions/1%3BDROP%20TABLE%20executions" "$RO"
refused "approve id 1 OR 1=1" POST "/api/v1/posts/1%20OR%201%3D1/approve" "$OP"
refused "reject id -1" POST "/api/v1/posts/-1/reject" "$OP"
refused "approve id 0x1" POST "/api/v1/posts/0x1/approve" "$OP"
refused "task name with quote" GET "/api/v1/tasks/generation%27--" "$RO"
refused "pause task x'; DROP TABLE tasks;--" POST "/api/v1/tasks/x%27%3B%20DROP%20TABLE%20tasks%3B--/pause" "$OP"
refused "trigger task %" POST "/api/v1/tasks/%25/trigger" "$OP"
refused "pause task _" POST "/api/v1/tasks/_/pause" "$OP"
refused "history of generation'--" GET "/api/v1/tasks/generation%27--/history" "$RO"
refused "../ in the path" GET "/api/v1/tasks/../../../etc/passwd" "$RO"
refused "encoded ../ in a task name" GET "/api/v1/tasks/..%2F..%2Fetc%2Fpasswd" "$RO"
refused "../ to a POST route" POST "/api/v1/posts/../tasks/generation/pause" "$OP"
refused "../ outside the api" GET "/../../etc/passwd" "$RO"
check "API attempts left the data untouched" test "$(snapshot)" = "$SNAP0"

# ---- btl state keys ----------------------------------------------------------------
# statecmd NAME ARGS...: run `btl state ARGS`, keep output, record exit code in RC.
statecmd() {
    local name=$1; shift
    RC=0
    "$BTL" state "$@" >"$T/$name.out" 2>"$T/$name.err" || RC=$?
}
for k in "a'b" 'a"b' "a%" "x'; DROP TABLE narrative_state;--" "k%_"; do
    statecmd setk 'set' "$k" 1
    if [ "$RC" -eq 2 ]; then
        pass "state set '$k' refused (exit 2)"
    elif [ "$RC" -eq 0 ]; then
        check "state set '$k' stored literally" sql_eq \
            "SELECT count(*) FROM narrative_state WHERE key = \$\$$k\$\$" 1
        sql "DELETE FROM narrative_state WHERE key = \$\$$k\$\$" >/dev/null
    else
        fail "state set '$k': exit $RC ($(cat "$T/setk.err"))"
    fi
done
statecmd set_a_ 'set' a_ '"under"'
log "state set a_: exit $RC"
for pat in a_ a% "a%" "_" "%" "a'" "a_.%"; do
    statecmd list list "$pat"
    check "state list '$pat' refused or literal (exit $RC)" bash -c \
        "[ $RC -eq 2 ] || { [ $RC -eq 0 ] && ! grep -qE '^(ab|ab\\.c|axb|keep\\.me)\\b' '$T/list.out'; }"
    statecmd clear clear "$pat"
    check "state clear '$pat' refused or literal (exit $RC)" bash -c "[ $RC -eq 0 ] || [ $RC -eq 2 ]"
    check "state clear '$pat' did not delete ab, ab.c, axb, keep.me" sql_eq \
        "SELECT count(*) FROM narrative_state WHERE key IN ('ab', 'ab.c', 'axb', 'keep.me')" 4
done
check "a_ itself was cleared or never stored" sql_eq "SELECT count(*) FROM narrative_state WHERE key LIKE 'a\\_%'" 0
check "btl state attempts left the data untouched" test "$(snapshot)" = "$SNAP0"

# ---- control socket ------------------------------------------------------------------
ping_ok() { control ping | grep -q '"ok":true'; }
check "control socket answers" ping_ok
for c in "trigger x'; DROP TABLE posts;--" "trigger generation;posting" "trigger generation' OR '1'='1" \
    'pause "generation"' "pause %" "pause _" "resume generation'--" "resume %" \
    "history generation'; DELETE FROM jobs;-- 5" "history generation 5; DROP TABLE tasks" "trigger ../generation" \
    "pause generation ; DROP TABLE tasks;--" "trigger generation ' OR 1=1"; do
    reply=$(control "$c" || true)
    if grep -q '"ok":false' <<<"$reply"; then
        pass "control '$c' → error reply"
    else
        fail "control '$c': $reply"
    fi
done
check "control attempts left the data untouched" test "$(snapshot)" = "$SNAP0"
check "no task paused by the attempts" sql_eq "SELECT count(*) FROM tasks WHERE is_paused" 0
# Undo what a failed check above may have done, so phase (2) runs as planned.
for t in $(sql "SELECT task_id FROM tasks WHERE is_paused"); do control "resume $t" >/dev/null || true; done

# ============================================================================
# (2) Secrets never leak: a short pipeline through the error paths
# ============================================================================
trigger() { control "trigger $1" | sed -n 's/.*"run_id":\([0-9]*\).*/\1/p'; }
GEN_RUN=$(trigger generation)
check "generation triggered (run ${GEN_RUN:-none})" test -n "$GEN_RUN"
GEN_RUN=${GEN_RUN:-0}
check "generation jobs all finished" wait_for "generation" 45 sql_eq \
    "SELECT count(*) >= 2 AND bool_and(status NOT IN ('queued', 'running')) FROM jobs WHERE run_id = $GEN_RUN" t
check "the fake LLM answered 401 (error path ran)" bash -c \
    "[ \$(jq -s '[.[] | select(.status == 401)] | length' '$T/llm.jsonl') -ge 1 ]"
CUR_RUN=$(trigger curation)
check "curation triggered" test -n "$CUR_RUN"
check "curation finished" wait_for "curation" 30 sql_eq \
    "SELECT count(*) FROM executions WHERE run_id = ${CUR_RUN:-0}" 1
sql "INSERT INTO posts (content_hash, body, narrative, angle, status, score, curated_at) VALUES
       ('sa1', 'approved one', 'n', 'feature', 'approved', 40, now()),
       ('sa2', 'approved two', 'n', 'feature', 'approved', 41, now()),
       ('sa3', 'approved three', 'n', 'feature', 'approved', 42, now())"
# One post per posting run: 401, then 403, then success.
for i in 1 2 3 4 5; do
    [ "$(jq -s '[.[] | select(.status == 200)] | length' "$T/discord.jsonl" 2>/dev/null || echo 0)" -ge 1 ] && break
    r=$(trigger posting)
    wait_for "posting run $r" 20 sql_ge "SELECT count(*) FROM executions WHERE run_id = ${r:-0}" 1 || true
done
check "fake Discord answered 401, 403 and 200" bash -c \
    "[ \"\$(jq -rs '[.[].status] | unique | map(tostring) | join(\",\")' '$T/discord.jsonl')\" = '200,401,403' ]"
# history takes its task name literally: '%' and '_' match no task.
for c in "history % 500" "history _ 500" "history %osting 500"; do
    reply=$(control "$c" || true)
    check "control '$c' → error or no executions" bash -c \
        "grep -q '\"ok\":false' <<<'$reply' || [ \"\$(jq '.executions | length' <<<'$reply')\" = 0 ]"
done
check "failures visible with a reason" sql_ge \
    "SELECT count(*) FROM posts WHERE status IN ('failed', 'unknown') OR last_error <> ''" 1

# Everything a client or operator can see.
for p in $HTTP_SCHED $HTTP_GEN $HTTP_CUR $HTTP_POST; do
    curl -fsS --max-time 5 "http://127.0.0.1:$p/metrics" >"$T/resp/metrics-$p" || fail "metrics on :$p"
done
call GET /api/v1/tasks "$RO"
call GET "/api/v1/executions?limit=500" "$RO"
call GET "/api/v1/posts?limit=500" "$RO"
call GET "/api/v1/state?limit=500" "$RO"
for t in generation curation posting; do
    call GET "/api/v1/tasks/$t" "$RO"
    call GET "/api/v1/tasks/$t/history?limit=500" "$RO"
done
for id in $(sql "SELECT id FROM executions"); do call GET "/api/v1/executions/$id" "$RO"; done
call GET /api/v1/tasks "$BAD"
call POST /api/v1/tasks/posting/pause "$RO"
call POST /api/v1/config/reload ""
for c in status tasks "history generation 50" "history posting 50" "history curation 50" "trigger nope"; do
    control "$c" >"$T/resp/control-${c// /_}" || true
done
check "API responses collected" test "$(find "$T/resp" -type f -size +0 | wc -l)" -ge 20
LOGS=("$T"/scheduler.log "$T"/generator.log "$T"/curator.log "$T"/poster.log "$T"/*.out "$T"/*.err)
check "the service logs are not empty" test "$(cat "$T"/{scheduler,generator,curator,poster}.log | wc -l)" -ge 20
for s in "${SECRETS[@]}"; do
    hits=$(grep -rlF -- "$s" "${LOGS[@]}" "$T/resp" 2>/dev/null || true)
    check "secret ${s%%-XYZ}-… appears in no log, metric, API response or control reply" test -z "$hits"
    [ -n "$hits" ] && grep -rnF -- "$s" $hits | head -5
done

# ============================================================================
# (3) HTTP abuse
# ============================================================================
# fast_get PATH [TOKEN]: 200 within 2 s.
fast_get() {
    local auth=()
    [ -n "${2:-}" ] && auth=(-H "Authorization: Bearer $2")
    local out; out=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' --max-time 2 "${auth[@]}" "$BASE$1") || true
    log "  GET $1 → $out"
    [ "${out%% *}" = 200 ]
}
server_conns() { ss -Htn state established "( sport = :$HTTP_SCHED )" | wc -l; }

# A request whose line and headers arrive one byte per 100 ms.
(
    exec 3<>"/dev/tcp/127.0.0.1/$HTTP_SCHED"
    req=$'GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1\r\nConnection: close\r\n\r\n'
    for ((i = 0; i < ${#req}; i++)); do
        printf '%s' "${req:i:1}" >&3 || exit 1
        [ "$i" -eq 3 ] && : >"$T/slow.started"
        sleep 0.1
    done
    timeout 10 cat <&3 >"$T/slow.out"
) &
PIDS+=("$!")
check "slow request started" wait_for "slow" 5 test -e "$T/slow.started"
check "/health/live within 2 s during the slow request" fast_get /health/live
check "API GET within 2 s during the slow request" fast_get /api/v1/tasks "$RO"

# 300 idle connections held open by one client (127.0.0.2) while probes come
# from another address (127.0.0.1): the per-address limit keeps slots free.
"$BTL_BUILD/conn_hold" "$HTTP_SCHED" 127.0.0.2 300 >"$T/idle.out" 2>"$T/idle.err" &
IDLE_PID=$!
PIDS+=("$IDLE_PID")
held() { sed -n 's/^open //p' "$T/idle.out" | tail -1; }
check "300 idle connections attempted" wait_for "idle conns" 10 grep -q '^opened ' "$T/idle.out"
check "the server keeps at most 64 of them" wait_for "per-address limit" 10 \
    bash -c "n=\$(sed -n 's/^open //p' '$T/idle.out' | tail -1); [ -n \"\$n\" ] && [ \"\$n\" -le 64 ] && [ \"\$n\" -ge 1 ]"
log "connections the client still holds: $(held); server side: $(server_conns)"
check "/health/live within 2 s with the idle connections held" fast_get /health/live
check "API GET within 2 s with the idle connections held" fast_get /api/v1/tasks "$RO"
check "the slow request was answered 200" wait_for "slow answer" 15 grep -q '^HTTP/1.1 200' "$T/slow.out"
check "the server closes the idle connections by its timeout" wait_for "idle closed" 40 \
    bash -c "[ \"\$(sed -n 's/^open //p' '$T/idle.out' | tail -1)\" = 0 ]"
kill "$IDLE_PID" 2>/dev/null || true
check "serving again after the idle connections" fast_get /health/live

head -c 70000 /dev/zero | tr '\0' h >"$T/bighdr"
big=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -H "X-Big: $(cat "$T/bighdr")" "$BASE/health/live" || true)
check "header over 64 KiB → 431/413 (got $big)" bash -c "[ '$big' = 431 ] || [ '$big' = 413 ]"
check "/health/live still served after the big header" fast_get /health/live
check "API still served after the big header" fast_get /api/v1/tasks "$RO"
check "the abuse left the data in place" sql_ge "SELECT count(*) FROM posts" 6

for s in poster curator generator scheduler; do
    stop_wait "$s"
    check "$s exits 0 on SIGTERM (got $STOP_STATUS)" test "$STOP_STATUS" = 0
done
finish
