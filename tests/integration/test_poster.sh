#!/usr/bin/env bash
# The poster against a fake Discord (tests/integration/fake_discord.c) with
# a real scheduler and Postgres (DESIGN §5):
#  (a) publish: Authorization "Bot <token>", the User-Agent format, nonce
#      <= 25 chars, enforce_nonce, content <= 2,000 characters; the row is
#      posted with the remote_id the fake returned; one post per tick
#  (w) a late tick outside the posting window posts nothing
#  (b) 429 retry_after 3 (longer than the first backoff, 2 s) -> approved
#      with not_before >= 429 time + 3 s; the next request is not earlier
#  (c) 500 -> retried later and posted
#  (d) 403 50013 -> failed, last_error holds 50013; over-long -> failed, no request
#  (e) poster SIGKILLed while the fake holds its request -> the post ends
#      'unknown', and is never sent again, even by a new poster
#  (f) 3 posters, 36 approved posts: each published exactly once
#  (g) the file platform writes one JSON line per post
#  (h) mastodon (Bearer, Idempotency-Key) and webhook (?wait=true, no nonce)
#  (i) posts_per_job 5 over 7 approved posts: one job posts 5, the next 2
#      (a backlog running dry is a success), the third finds none (skipped)
source "$(dirname "$0")/lib.sh"
btl_setup
export T

FAKE_PORT=$(free_port)
REC="$T/fake.jsonl"
SCRIPT="$T/script"
: >"$SCRIPT"
export FAKE_PORT DISCORD_TOKEN="tok-$RANDOM-secret" POSTING_CHANNEL_ID=112233445566
export MASTODON_TOKEN="$DISCORD_TOKEN" # the fake checks one token for both
export DISCORD_WEBHOOK_URL="http://127.0.0.1:$FAKE_PORT/webhooks/999/hook-secret"
WIN_FROM=$(date -u -d '+2 hour' +%H:00)
WIN_TO=$(date -u -d '+3 hour' +%H:00)
export WIN_FROM WIN_TO

make_config() { # FILE LEASE
    sed "s/@LEASE@/$2/" >"$1" <<'EOF2'
database: { url: "${DATABASE_URL}" }
bus:
  publish: "tcp://127.0.0.1:${PUB_PORT}"
  collect: "tcp://127.0.0.1:${COLLECT_PORT}"
  control: "tcp://127.0.0.1:${CONTROL_PORT}"
  connect: tcp://127.0.0.1
scheduler: { check_interval: 200ms, max_consecutive_failures: 1000, failover: 2s }
worker: { concurrency: 2, lease: @LEASE@, poll_fallback: 300ms, batch_size: 4 }
platforms:
  discord: { api_base: "http://127.0.0.1:${FAKE_PORT}/api/v10", token_env: DISCORD_TOKEN, channel_id: "${POSTING_CHANNEL_ID}" }
  file: { path: "${T}/out/sink/posts.log" }
  mastodon: { base_url: "http://127.0.0.1:${FAKE_PORT}/", token_env: MASTODON_TOKEN }
  discord_webhook: { url_env: DISCORD_WEBHOOK_URL }
tasks:
  posting:
    service: poster
    schedule: "every 1s"
    platform: discord
    execution: { max_retries: 0 }
  burst:
    service: poster
    schedule: "once 2099-01-01T00:00:00Z"
    platform: discord
    fanout: 40
    execution: { max_retries: 0 }
  windowed:
    service: poster
    schedule: "once 2099-01-01T00:00:00Z"
    platform: discord
    window: { from: "${WIN_FROM}", to: "${WIN_TO}", timezone: UTC }
  filepost:
    service: poster
    schedule: "once 2099-01-01T00:00:00Z"
    platform: file
  mastopost:
    service: poster
    schedule: "once 2099-01-01T00:00:00Z"
    platform: mastodon
  hookpost:
    service: poster
    schedule: "once 2099-01-01T00:00:00Z"
    platform: discord_webhook
  backlog:
    service: poster
    schedule: "once 2099-01-01T00:00:00Z"
    platform: discord
    posts_per_job: 5
EOF2
}
make_config "$T/btl.yaml" 10s
make_config "$T/short.yaml" 2s

# ---- helpers over the fake's record -------------------------------------
# Requests the fake received for a nonce.
nreq() { jq -s --arg n "$1" '[.[] | select(.nonce == $n)] | length' "$REC"; }
nreq_eq() { [ "$(nreq "$1")" = "$2" ]; }
# Field of the K-th (0-based) request for a nonce.
req_field() { jq -s -r --arg n "$1" --argjson k "$2" "[.[] | select(.nonce == \$n)][\$k].$3" "$REC"; }
req_status_seen() { # NONCE STATUS
    [ "$(jq -s --arg n "$1" --argjson s "$2" '[.[] | select(.nonce == $n and .status == $s)] | length' "$REC")" -ge 1 ]
}
set_script() { printf '%s\n' "$@" >"$T/script.tmp" && mv "$T/script.tmp" "$SCRIPT"; }
# insert_post TEXT_SQL: an approved post, prints its id.
insert_post() {
    sql "INSERT INTO posts (content_hash, body, status, score, narrative) VALUES (md5(random()::text || clock_timestamp()::text), $1, 'approved', 40, 'test') RETURNING id"
}
status_of() { sql "SELECT status FROM posts WHERE id = $1"; }
status_is() { [ "$(status_of "$1")" = "$2" ]; }
trigger() {
    local reply
    reply=$(control "trigger $1")
    sed -n 's/.*"run_id":\([0-9]*\).*/\1/p' <<<"$reply"
}

# ---- start ------------------------------------------------------------------
"$BTL_BUILD/fake_discord" --port "$FAKE_PORT" --record "$REC" --script "$SCRIPT" \
    --token "$DISCORD_TOKEN" >"$T/fake.log" 2>&1 &
PIDS+=("$!"); NAMES+=(fake); PID_fake=$!
check "fake listening" wait_for "fake" 20 grep -q "^listening $FAKE_PORT" "$T/fake.log"

start scheduler btl-scheduler --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_SCHED" --instance sched-a
check "scheduler ready" wait_for "scheduler ready" 30 http_ok "$HTTP_SCHED" /health/ready
HTTP_POST_B=$(free_port)
start post-a btl-poster --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_POST" --instance post-a
start post-b btl-poster --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_POST_B" --instance post-b
check "post-a live" wait_for "post-a" 30 http_ok "$HTTP_POST" /health/live
check "post-b live" wait_for "post-b" 30 http_ok "$HTTP_POST_B" /health/live

# ---- (a) publish -------------------------------------------------------------
A1=$(insert_post "'Hello from **Botticelli** <@everyone> 🎨'")
A2=$(insert_post "repeat('é', 2000)")
A3=$(insert_post "'Third post, plain text.'")
check "(a) three posts published" wait_for "posted" 30 \
    sql_eq "SELECT count(*) FROM posts WHERE id IN ($A1,$A2,$A3) AND status = 'posted'" 3
for id in $A1 $A2 $A3; do
    n="btl-$id"
    check "(a) one request for $n" nreq_eq "$n" 1
    check "(a) Authorization Bot <token>" test "$(req_field "$n" 0 authorization)" = "Bot $DISCORD_TOKEN"
    check "(a) User-Agent DiscordBot (url, version)" \
        grep -Eq '^DiscordBot \(https?://[^,]+, [0-9]+\.[0-9]+\.[0-9]+\)$' <<<"$(req_field "$n" 0 user_agent)"
    check "(a) nonce <= 25 chars" test "$(req_field "$n" 0 nonce | tr -d '\n' | wc -c)" -le 25
    check "(a) enforce_nonce true" test "$(req_field "$n" 0 body.enforce_nonce)" = true
    check "(a) allowed_mentions parse []" test "$(req_field "$n" 0 'body.allowed_mentions.parse | length')" = 0
    check "(a) content <= 2000 chars" test "$(req_field "$n" 0 chars)" -le 2000
    check "(a) remote_id is what the fake returned" \
        test "$(sql "SELECT remote_id FROM posts WHERE id = $id")" = "$(req_field "$n" 0 reply_id)"
    check "(a) posted_at, platform, channel, lease cleared" sql_eq \
        "SELECT posted_at IS NOT NULL AND platform = 'discord' AND channel = '$POSTING_CHANNEL_ID' AND lease_until IS NULL FROM posts WHERE id = $id" t
done
check "(a) 2000-character post sent whole" test "$(req_field "btl-$A2" 0 chars)" = 2000
check "(a) one post per tick (3 posts, 3 distinct jobs and runs)" sql_eq \
    "SELECT count(DISTINCT metadata->>'post_job_id') || ' ' || count(DISTINCT metadata->>'post_run_id') FROM posts WHERE id IN ($A1,$A2,$A3)" "3 3"

# ---- (w) posting window --------------------------------------------------------
# Paused, and no job of it still queued: nothing else may claim the test post.
pause_posting() {
    control 'pause posting' >/dev/null
    wait_for "poster queue idle" 20 \
        sql_eq "SELECT count(*) FROM jobs WHERE queue = 'poster' AND status IN ('queued', 'running')" 0
}
pause_posting
W=$(insert_post "'Window test post'")
run=$(trigger windowed)
check "(w) trigger windowed" test -n "$run"
check "(w) late tick is skipped" wait_for "windowed exec" 20 \
    sql_eq "SELECT items_skipped || ' ' || items_ok FROM executions WHERE run_id = ${run:-0}" "1 0"
check "(w) nothing posted outside the window" status_is "$W" approved
check "(w) no request for it" nreq_eq "btl-$W" 0
control 'resume posting' >/dev/null
check "(w) posted once the regular task runs" wait_for "W posted" 20 status_is "$W" posted

# ---- (b) 429 ---------------------------------------------------------------------
set_script "429 3"
B=$(insert_post "'Rate limited post'")
check "(b) fake answered 429" wait_for "429" 20 req_status_seen "btl-$B" 429
t429=$(req_field "btl-$B" 0 ts_ms)
check "(b) back to approved" wait_for "approved" 10 status_is "$B" approved
nb=$(sql "SELECT (extract(epoch FROM not_before) * 1000)::bigint FROM posts WHERE id = $B")
check "(b) not_before >= 429 time + 3 s ($nb vs $t429)" test "$nb" -ge $((t429 + 3000))
check "(b) last_error names the 429" bash -c "psql '$DATABASE_URL' -Atc 'SELECT last_error FROM posts WHERE id = $B' | grep -q '^429'"
check "(b) posted after the wait" wait_for "B posted" 20 status_is "$B" posted
t2=$(req_field "btl-$B" 1 ts_ms)
check "(b) next request not earlier than retry_after ($t2 vs $t429)" test "$t2" -ge $((t429 + 3000))
check "(b) two requests in all" nreq_eq "btl-$B" 2

# ---- (c) 500 ------------------------------------------------------------------------
set_script "500"
C=$(insert_post "'Server error post'")
check "(c) fake answered 500" wait_for "500" 20 req_status_seen "btl-$C" 500
check "(c) retried and posted" wait_for "C posted" 20 status_is "$C" posted
check "(c) exactly one retry" nreq_eq "btl-$C" 2
check "(c) attempts recorded" sql_eq "SELECT attempts FROM posts WHERE id = $C" 2

# ---- (d) 403 and over-long --------------------------------------------------------------
set_script "403 50013"
D=$(insert_post "'Forbidden post'")
check "(d) failed" wait_for "D failed" 20 status_is "$D" failed
check "(d) last_error keeps the Discord code" \
    bash -c "psql '$DATABASE_URL' -Atc 'SELECT last_error FROM posts WHERE id = $D' | grep -q '403 50013 Missing Permissions'"
check "(d) never retried" nreq_eq "btl-$D" 1
L=$(insert_post "repeat('x', 2001)")
check "(d) over-long post failed" wait_for "L failed" 20 status_is "$L" failed
check "(d) over-long reason" bash -c "psql '$DATABASE_URL' -Atc 'SELECT last_error FROM posts WHERE id = $L' | grep -q '2001 characters'"
check "(d) over-long never sent" nreq_eq "btl-$L" 0
nmet=$(( $(metric "$HTTP_POST" btl_platform_requests_total) + $(metric "$HTTP_POST_B" btl_platform_requests_total) ))
check "metrics: platform requests counted ($nmet)" test "$nmet" -ge 9
m403=$(( $(metric "$HTTP_POST" 'btl_platform_requests_total{platform="discord",code="403"}') + $(metric "$HTTP_POST_B" 'btl_platform_requests_total{platform="discord",code="403"}') ))
check "metrics: the 403 counted by code" test "$m403" = 1

# ---- (e) SIGKILL while the request is in flight ---------------------------------------------
stop_wait post-a
check "post-a exits 0 on SIGTERM ($STOP_STATUS)" test "$STOP_STATUS" = 0
stop_wait post-b
check "post-b exits 0 on SIGTERM ($STOP_STATUS)" test "$STOP_STATUS" = 0
set_script "delay 5000"
HTTP_POST_E=$(free_port)
start post-e btl-poster --config "$T/short.yaml" --http "127.0.0.1:$HTTP_POST_E" --instance post-e
E=$(insert_post "'Killed in flight'")
check "(e) fake holds the request" wait_for "E sent" 30 nreq_eq "btl-$E" 1
kill -KILL "$(pid_of post-e)"
log "post-e killed while the fake delays; post $E is $(status_of "$E")"
check "(e) post ends unknown after its lease" wait_for "E unknown" 20 status_is "$E" unknown
HTTP_POST_C=$(free_port)
start post-c btl-poster --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_POST_C" --instance post-c
E2=$(insert_post "'After the crash'")
check "(e) a new poster keeps posting" wait_for "E2 posted" 30 status_is "$E2" posted
before=$(sql "SELECT count(*) FROM executions WHERE task_id = 'posting'")
check "(e) a few more ticks pass" wait_for "ticks" 20 \
    sql_ge "SELECT count(*) FROM executions WHERE task_id = 'posting'" $((before + 3))
check "(e) still unknown" status_is "$E" unknown
check "(e) sent exactly once" nreq_eq "btl-$E" 1

# ---- (f) scale: 3 posters, 36 posts -----------------------------------------------------------
HTTP_POST_D=$(free_port); HTTP_POST_F=$(free_port)
start post-d btl-poster --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_POST_D" --instance post-d
start post-f btl-poster --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_POST_F" --instance post-f
check "post-d live" wait_for "post-d" 30 http_ok "$HTTP_POST_D" /health/live
check "post-f live" wait_for "post-f" 30 http_ok "$HTTP_POST_F" /health/live
sql "INSERT INTO posts (content_hash, body, status, score, narrative) SELECT md5('scale' || g), 'Scale post ' || g, 'approved', 30 + g % 10, 'scale' FROM generate_series(1, 36) g" >/dev/null
trigger burst >/dev/null
check "(f) all 36 posted" wait_for "scale posted" 60 \
    sql_eq "SELECT count(*) FROM posts WHERE narrative = 'scale' AND status = 'posted'" 36
trigger burst >/dev/null # more jobs than posts: the extra ones find nothing
check "(f) each scale post requested exactly once" test "$(
    sql "SELECT 'btl-' || id FROM posts WHERE narrative = 'scale'" | while read -r n; do nreq "$n"; done | sort | uniq -c | awk '{print $1 "x" $2}')" = "36x1"
check "(f) no nonce replayed" test "$(jq -s '[.[] | select(.dup)] | length' "$REC")" = 0
check "(f) the work was shared" sql_ge \
    "SELECT count(DISTINCT claimed_by) FROM posts WHERE narrative = 'scale'" 2
check "(f) one post per job" sql_eq \
    "SELECT count(DISTINCT metadata->>'post_job_id') FROM posts WHERE narrative = 'scale'" 36

# The database agrees with the fake: every posted row's remote_id is the id
# the fake answered for its nonce, and every nonce the fake accepted belongs
# to a post that is posted or unknown.
sql "SELECT 'btl-' || id || ' ' || remote_id FROM posts WHERE status = 'posted' AND platform = 'discord' ORDER BY 1" >"$T/db.txt"
jq -r 'select(.status == 200) | "\(.nonce) \(.reply_id)"' "$REC" | sort -u >"$T/fake.txt"
check "db remote_ids match the fake's answers" test -z "$(comm -23 "$T/db.txt" "$T/fake.txt")"
sql "SELECT 'btl-' || id FROM posts WHERE status IN ('posted', 'unknown') ORDER BY 1" >"$T/db_ok.txt"
jq -r 'select(.status == 200) | .nonce' "$REC" | sort -u >"$T/fake_ok.txt"
check "every accepted nonce is a posted/unknown post" test -z "$(comm -13 "$T/db_ok.txt" "$T/fake_ok.txt")"
check "no approved post left behind (all posted/failed/unknown)" sql_eq \
    "SELECT count(*) FROM posts WHERE status NOT IN ('posted', 'failed', 'unknown')" 0

# ---- (g) file platform -----------------------------------------------------------------------
pause_posting
G1=$(insert_post "'File sink one'")
G2=$(insert_post "'File sink \"two\" with é'")
trigger filepost >/dev/null
trigger filepost >/dev/null
check "(g) both posted to the file" wait_for "file posted" 20 \
    sql_eq "SELECT count(*) FROM posts WHERE id IN ($G1,$G2) AND status = 'posted' AND platform = 'file'" 2
F="$T/out/sink/posts.log"
check "(g) two lines" test "$(wc -l <"$F")" = 2
check "(g) each line is JSON with post_id, text, ts, idempotency_key" test "$(
    jq -s '[.[] | select((.post_id|type) == "number" and (.text|type) == "string" and (.ts|type) == "string" and .idempotency_key == "btl-\(.post_id)")] | length' "$F")" = 2
check "(g) text preserved" test "$(jq -r "select(.post_id == $G2) | .text" "$F")" = 'File sink "two" with é'
# remote_id "file:<byte offset of the line>"
paste -d' ' <(jq -r .post_id "$F") <(LC_ALL=C awk '{ print off + 0; off += length($0) + 1 }' "$F") |
    sort >"$T/offsets.txt"
check "(g) remote_id is the line's byte offset" test "$(sql "SELECT id || ' ' || substr(remote_id, 6) FROM posts WHERE id IN ($G1,$G2) ORDER BY 1")" = "$(cat "$T/offsets.txt")"

# ---- (h) mastodon and webhook ------------------------------------------------------------------
M=$(insert_post "'A toot from Botticelli'")
trigger mastopost >/dev/null
check "(h) mastodon: posted" wait_for "M posted" 20 status_is "$M" posted
mrec() { jq -s -r --arg k "btl-$M" "[.[] | select(.route == \"mastodon\" and .idempotency_key == \$k)] | $1" "$REC"; }
check "(h) mastodon: one request with Idempotency-Key btl-$M" test "$(mrec length)" = 1
check "(h) mastodon: Bearer token" test "$(mrec '.[0].authorization')" = "Bearer $MASTODON_TOKEN"
check "(h) mastodon: status text" test "$(mrec '.[0].body.status')" = "A toot from Botticelli"
check "(h) mastodon: remote_id" test "$(sql "SELECT remote_id FROM posts WHERE id = $M")" = "$(mrec '.[0].reply_id')"
H=$(insert_post "'A webhook post'")
trigger hookpost >/dev/null
check "(h) webhook: posted" wait_for "H posted" 20 status_is "$H" posted
hrec() { jq -s -r "[.[] | select(.route == \"webhook\" and .body.content == \"A webhook post\")] | $1" "$REC"; }
check "(h) webhook: one request" test "$(hrec length)" = 1
check "(h) webhook: path and wait=true" test "$(hrec '.[0].path + " " + .[0].wait')" = "/webhooks/999/hook-secret true"
check "(h) webhook: no nonce" test "$(hrec '.[0].body | has("nonce")')" = false
check "(h) webhook: remote_id and channel" test "$(sql "SELECT remote_id || ' ' || channel FROM posts WHERE id = $H")" = "$(hrec '.[0].reply_id') webhook:999"
check "(h) no secret in any log" bash -c "! grep -l -e '$DISCORD_TOKEN' -e 'hook-secret' '$T'/post-*.log '$T'/scheduler.log"

# ---- (i) posts_per_job ---------------------------------------------------------------------------
sql "INSERT INTO posts (content_hash, body, status, score, narrative) SELECT md5('backlog' || g), 'Backlog post ' || g, 'approved', 40 - g, 'backlog' FROM generate_series(1, 7) g" >/dev/null
backlog_posted() { sql "SELECT count(*) FROM posts WHERE narrative = 'backlog' AND status = 'posted'"; }
run_counts() { sql "SELECT items_ok || ' ' || items_skipped || ' ' || items_failed FROM executions WHERE run_id = ${1:-0}"; }
r1=$(trigger backlog)
check "(i) first job: its run is recorded" wait_for "backlog run 1" 20 sql_eq "SELECT count(*) FROM executions WHERE run_id = ${r1:-0}" 1
check "(i) first job posted 5 of 7" test "$(backlog_posted)" = 5
check "(i) ... all by that one job" sql_eq \
    "SELECT count(DISTINCT metadata->>'post_job_id') FROM posts WHERE narrative = 'backlog' AND status = 'posted'" 1
check "(i) ... the 5 best first" sql_eq \
    "SELECT string_agg(body, ',' ORDER BY score DESC) FROM posts WHERE narrative = 'backlog' AND status = 'approved'" \
    "Backlog post 6,Backlog post 7"
check "(i) first run: one job done" test "$(run_counts "$r1")" = "1 0 0"
r2=$(trigger backlog)
check "(i) second job: its run is recorded" wait_for "backlog run 2" 20 sql_eq "SELECT count(*) FROM executions WHERE run_id = ${r2:-0}" 1
check "(i) all 7 posted" test "$(backlog_posted)" = 7
check "(i) a backlog running dry is a success" test "$(run_counts "$r2")" = "1 0 0"
r3=$(trigger backlog)
check "(i) third job finds none: skipped" wait_for "backlog run 3" 20 sql_eq "SELECT items_ok || ' ' || items_skipped FROM executions WHERE run_id = ${r3:-0}" "0 1"
check "(i) each backlog post requested exactly once" test "$(
    sql "SELECT 'btl-' || id FROM posts WHERE narrative = 'backlog'" | while read -r n; do nreq "$n"; done | sort | uniq -c | awk '{print $1 "x" $2}')" = "7x1"

for s in post-c post-d post-f scheduler; do
    stop_wait "$s"
    check "$s exits 0 on SIGTERM ($STOP_STATUS)" test "$STOP_STATUS" = 0
done
finish
