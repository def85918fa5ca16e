#!/usr/bin/env bash
# The content pipeline end to end: real Postgres, the real scheduler,
# generator, curator and poster processes.
#
# (1) OpenAI-compatible fake LLM (fake_llm) + fake Discord (fake_discord): a
#     generation run of the shipped carousel (1 iteration x 5 narratives)
#     yields N pending posts; a curation run approves exactly
#     min(select_top 2, N); posting ("every 1s") publishes them one per tick.
#     The fake's record shows auth "Bot <token>", User-Agent "DiscordBot
#     (url, version)", nonce <= 25 chars with enforce_nonce, content <= 2,000
#     characters; the database matches what the fake received (each posted
#     post's remote_id is an id the fake returned for exactly that text and
#     nonce, as many messages as posted posts, no nonce twice, nothing more
#     sent once the approved posts are gone); executions for all three
#     services.
# (2) What `make run` does: config/botticelli.yaml with the demo overrides
#     from `scripts/run.sh --demo-env`, the offline provider, the file sink
#     and one generation trigger at start: posts reach the file within a
#     minute, one JSON line each, matching the posted rows.
source "$(dirname "$0")/lib.sh"
btl_setup

CAROUSEL="$BTL_SRC/config/narratives/generation_carousel.yaml"
export LLM_API_KEY="sk-test-$RANDOM$RANDOM"
export DISCORD_TOKEN="bot-token-$RANDOM$RANDOM"
export POSTING_CHANNEL_ID=998877665544332211
LLM_PORT=$(free_port)
DISCORD_PORT=$(free_port)
export LLM_PORT DISCORD_PORT CAROUSEL

trigger() { # TASK -> run id on stdout
    local reply
    reply=$(control "trigger $1")
    sed -n 's/.*"run_id":\([0-9]*\).*/\1/p' <<<"$reply"
}
# A psql script on stdin with the fake's record as the jsonb array :'rec'.
sql_rec() { # FILE <<SQL
    psql "$DATABASE_URL" -qAtX -v ON_ERROR_STOP=1 -v rec="$(jq -cs . "$1")"
}

# ============================================================================
# (1) fake OpenAI-compatible LLM + fake Discord
# ============================================================================
start fake_llm fake_llm --port "$LLM_PORT" --record "$T/llm.jsonl"
DREC="$T/discord.jsonl"
start fake_discord fake_discord --port "$DISCORD_PORT" --record "$DREC" --token "$DISCORD_TOKEN"
check "fake LLM listening" wait_for "fake_llm" 20 grep -q "^listening $LLM_PORT" "$T/fake_llm.log"
check "fake Discord listening" wait_for "fake_discord" 20 grep -q "^listening $DISCORD_PORT" "$T/fake_discord.log"

write_config "$T/btl.yaml" <<'EOF'
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
    schedule: "every 1s"
    jitter_percent: 0
    platform: discord
    execution: { max_retries: 0 }
EOF
check "config validates" "$BTL_BUILD/btl" validate "$T/btl.yaml"

start scheduler btl-scheduler --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_SCHED" --instance sched-1
start generator btl-generator --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_GEN" --instance gen-1
start curator btl-curator --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_CUR" --instance cur-1
start poster btl-poster --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_POST" --instance post-1
for p in $HTTP_SCHED $HTTP_GEN $HTTP_CUR $HTTP_POST; do
    check "ready on :$p" wait_for "ready :$p" 30 http_ok "$p" /health/ready
done
check "tasks synced" wait_for "tasks" 20 sql_eq "SELECT count(*) FROM tasks WHERE task_id IN ('generation','curation','posting')" 3

# ---- generation ---------------------------------------------------------------
GEN_RUN=$(trigger generation)
check "generation triggered (run ${GEN_RUN:-none})" test -n "$GEN_RUN"
GEN_RUN=${GEN_RUN:-0}
check "plan + 5 generate.post jobs done" wait_for "generation jobs" 60 \
    sql_eq "SELECT count(*) FROM jobs WHERE run_id = $GEN_RUN AND status = 'done'" 6
check "one generate.post job per narrative" sql_eq \
    "SELECT count(DISTINCT payload->>'narrative') FROM jobs WHERE run_id = $GEN_RUN AND kind = 'generate.post'" 5
N=$(sql "SELECT count(*) FROM posts WHERE run_id = $GEN_RUN")
log "generated posts: $N"
check "the run yielded posts (1..5: $N)" test "$N" -ge 1 -a "$N" -le 5
check "all generated posts pending (curation not run yet)" sql_eq \
    "SELECT count(*) FROM posts WHERE run_id = $GEN_RUN AND status = 'pending'" "$N"
check "bodies 1..1800 characters" sql_eq \
    "SELECT count(*) FROM posts WHERE run_id = $GEN_RUN AND (char_length(body) > 1800 OR btrim(body) = '')" 0
check "generation went through the fake LLM with the API key" bash -c \
    "[ \$(jq -s --arg a 'Bearer $LLM_API_KEY' '[.[] | select(.path == \"/v1/chat/completions\" and .auth == \$a and .model == \"fake-model\" and .status == 200)] | length' '$T/llm.jsonl') -ge 25 ]"
check "no post sent before curation" test "$(wc -l <"$DREC")" -eq 0

# ---- curation -------------------------------------------------------------------
CUR_RUN=$(trigger curation)
check "curation triggered (run ${CUR_RUN:-none})" test -n "$CUR_RUN"
CUR_RUN=${CUR_RUN:-0}
check "every generated post decided" wait_for "curation" 60 sql_eq \
    "SELECT count(*) FROM posts WHERE run_id = $GEN_RUN AND curated_at IS NULL" 0
A=$((N < 2 ? N : 2))
check "scoring went through the fake LLM (### POST blocks)" bash -c \
    "[ \$(jq -s '[.[] | select(.prompt != null and (.prompt | contains(\"### POST \")))] | length' '$T/llm.jsonl') -ge 1 ]"
check "exactly min(select_top, N) = $A approved (or already posting/posted)" sql_eq \
    "SELECT count(*) FROM posts WHERE run_id = $GEN_RUN AND status IN ('approved','posting','posted')" "$A"
check "the rest rejected as not in the top 2" sql_eq \
    "SELECT count(*) FROM posts WHERE run_id = $GEN_RUN AND status = 'rejected' AND reject_reason LIKE 'not in top 2%'" $((N - A))
check "every decided post has five scores" sql_eq \
    "SELECT count(*) FROM posts WHERE run_id = $GEN_RUN AND scores ?& array['engagement','clarity','value','tone','polish'] AND score BETWEEN 5 AND 50" "$N"

# ---- posting ----------------------------------------------------------------------
check "all $A approved posts posted" wait_for "posted" 60 sql_eq \
    "SELECT count(*) FROM posts WHERE run_id = $GEN_RUN AND status = 'posted'" "$A"
check "posted rows complete (remote_id, posted_at, platform, channel)" sql_eq \
    "SELECT count(*) FROM posts WHERE status = 'posted' AND remote_id <> '' AND posted_at IS NOT NULL AND platform = 'discord' AND channel = '$POSTING_CHANNEL_ID'" "$A"
check "one post per tick (each posted by a different posting run)" sql_eq \
    "SELECT count(DISTINCT metadata->>'post_run_id') FROM posts WHERE status = 'posted'" "$A"
# Later ticks find nothing: no further request reaches Discord.
before=$(sql "SELECT count(*) FROM executions WHERE task_id = 'posting'")
check "three more posting ticks ran" wait_for "idle ticks" 30 sql_ge \
    "SELECT count(*) FROM executions WHERE task_id = 'posting'" $((before + 3))
check "idle ticks are skipped, not failed" sql_eq \
    "SELECT count(*) FROM executions WHERE task_id = 'posting' AND NOT success" 0

# ---- what the fake Discord received -------------------------------------------------
check "fake Discord got exactly $A requests" test "$(wc -l <"$DREC")" -eq "$A"
check "every request: route, auth, User-Agent, nonce, enforce_nonce, <= 2000 chars" bash -c "
    jq -e -s --arg auth 'Bot $DISCORD_TOKEN' --arg path '/api/v10/channels/$POSTING_CHANNEL_ID/messages' '
      length > 0 and all(.[];
        .method == \"POST\" and .path == \$path and .route == \"discord\" and
        .authorization == \$auth and
        (.user_agent | test(\"^DiscordBot \\\\(https?://[^ ,]+, [0-9][^)]*\\\\)\$\")) and
        (.content_type | startswith(\"application/json\")) and
        (.nonce | type == \"string\" and length >= 1 and length <= 25) and
        .body.enforce_nonce == true and
        .chars >= 1 and .chars <= 2000 and
        .status == 200 and .dup == false and (.reply_id | type == \"string\"))' '$DREC' >/dev/null"
check "no nonce twice" bash -c \
    "[ \$(jq -s '[.[].nonce] | unique | length' '$DREC') -eq \$(jq -s 'length' '$DREC') ]"
log "user agent: $(jq -r .user_agent "$DREC" | head -1)"

sql_rec "$DREC" >"$T/consistency.out" <<'SQL'
WITH rec AS (SELECT r FROM jsonb_array_elements(:'rec'::jsonb) r),
     sent AS (SELECT r->>'reply_id' AS rid, r->'body'->>'content' AS content, r->>'nonce' AS nonce
              FROM rec WHERE (r->>'status')::int = 200)
SELECT (SELECT count(*) FROM posts WHERE status = 'posted') || ' ' ||
       (SELECT count(*) FROM sent) || ' ' ||
       (SELECT count(*) FROM posts p JOIN sent s ON s.rid = p.remote_id
         WHERE p.status = 'posted' AND s.content = p.body AND s.nonce = 'btl-' || p.id) || ' ' ||
       (SELECT count(DISTINCT rid) FROM sent);
SQL
read -r n_posted n_sent n_match n_ids <"$T/consistency.out" || true
log "posted rows $n_posted, messages at the fake $n_sent, matching $n_match, distinct ids $n_ids"
check "messages at the fake == posted posts" test "${n_sent:-x}" = "${n_posted:-y}"
check "each posted post: remote_id returned by the fake for its exact text and nonce btl-<id>" \
    test "${n_match:-x}" = "${n_posted:-y}"
check "the fake returned distinct ids" test "${n_ids:-x}" = "${n_sent:-y}"
check "no post left posting, unknown or failed" sql_eq \
    "SELECT count(*) FROM posts WHERE status IN ('posting','unknown','failed')" 0

check "executions recorded for all three services" wait_for "executions" 20 sql_eq \
    "SELECT count(DISTINCT service) FROM executions WHERE success AND task_id IN ('generation','curation','posting') AND service IN ('generator','curator','poster')" 3
check "generation execution counts its 6 jobs" wait_for "gen items" 20 sql_eq \
    "SELECT sum(items_ok + items_skipped) FROM executions WHERE run_id = $GEN_RUN AND success" 6
check "curation execution recorded for its run" sql_ge \
    "SELECT count(*) FROM executions WHERE run_id = $CUR_RUN AND success AND service = 'curator'" 1
check "posting executions that published: $A" sql_eq \
    "SELECT count(*) FROM executions WHERE task_id = 'posting' AND success AND items_ok > 0" "$A"
check "poster metric counts the posts" test "$(metric "$HTTP_POST" btl_poster_posts_total)" -ge "$A"

for s in poster curator generator scheduler; do
    stop_wait "$s"
    check "$s exits 0 on SIGTERM (got $STOP_STATUS)" test "$STOP_STATUS" = 0
done

# ============================================================================
# (2) make run: shipped config, demo overrides, offline provider, file sink
# ============================================================================
# A database of its own in the same cluster: the shipped task names again.
sql "CREATE DATABASE demo"
DATABASE_URL="${DATABASE_URL%/*}/demo"
export DATABASE_URL
eval "$(bash "$BTL_SRC/scripts/run.sh" --demo-env)"
log "demo overrides: $(bash "$BTL_SRC/scripts/run.sh" --demo-env | tr '\n' ' ')"
P1=$(free_port); P2=$(free_port); P3=$(free_port)
export BTL_BUS_PUBLISH="tcp://127.0.0.1:$P1" BTL_BUS_COLLECT="tcp://127.0.0.1:$P2"
export BTL_BUS_CONTROL="tcp://127.0.0.1:$P3" BTL_BUS_CONNECT=tcp://127.0.0.1
export BTL_CONTROL_URL="$BTL_BUS_CONTROL" BTL_POSTS_FILE="$T/var/posts.log"
unset LLM_KIND POSTING_PLATFORM LLM_BASE_URL
H1=$(free_port); H2=$(free_port); H3=$(free_port); H4=$(free_port)
CFG="$BTL_SRC/config/botticelli.yaml"
cd "$BTL_SRC" || exit 1 # the shipped config names its narrative relative to the repo
check "shipped config validates with the demo overrides" "$BTL_BUILD/btl" validate "$CFG"

start d-scheduler btl-scheduler --config "$CFG" --http "127.0.0.1:$H1" --instance d-sched
start d-generator btl-generator --config "$CFG" --http "127.0.0.1:$H2" --instance d-gen
start d-curator btl-curator --config "$CFG" --http "127.0.0.1:$H3" --instance d-cur
start d-poster btl-poster --config "$CFG" --http "127.0.0.1:$H4" --instance d-post
T0=$(date +%s)
# As run.sh: trigger generation once the scheduler answers with its tasks.
check "demo: generation triggered at start" wait_for "demo trigger" 30 \
    "$BTL_BUILD/btl" trigger generation --config "$CFG"
check "demo: posting task planned every 15 s" sql_eq \
    "SELECT schedule FROM tasks WHERE task_id = 'posting'" "every 15s"
check "demo: posts reach the file within a minute" wait_for "posts.log" 60 test -s "$BTL_POSTS_FILE"
log "first line in posts.log after $(($(date +%s) - T0)) s"
check "demo: the offline provider wrote the posts" sql_eq \
    "SELECT bool_and(metadata->>'provider' = 'offline') FROM posts WHERE task_id = 'generation'" t
check "demo: curation woke on post.generated (no trigger)" sql_ge \
    "SELECT count(*) FROM posts WHERE status IN ('approved','posting','posted')" 1
# No further posts while the file and the rows are compared: stop the poster
# (a line is written before its row is marked posted, so it records first).
stop_wait d-poster
check "d-poster exits 0 on SIGTERM (got $STOP_STATUS)" test "$STOP_STATUS" = 0
check "demo: posted rows match the file's lines" wait_for "file rows" 20 bash -c \
    "[ \$(psql '$DATABASE_URL' -qAtX -c \"SELECT count(*) FROM posts WHERE status = 'posted' AND platform = 'file'\") -eq \$(wc -l <'$BTL_POSTS_FILE') ]"
check "demo: each line one JSON object {post_id, text, ts, idempotency_key}" jq -e -s '
    length >= 1 and all(.[]; (.post_id | type == "number") and (.text | type == "string" and length > 0) and
      (.ts | test("^[0-9]{4}-[0-9]{2}-[0-9]{2}T")) and .idempotency_key == "btl-\(.post_id)")' \
    "$BTL_POSTS_FILE"
sql_rec "$BTL_POSTS_FILE" >"$T/file.out" <<'SQL'
SELECT count(*) FROM jsonb_array_elements(:'rec'::jsonb) r
  JOIN posts p ON p.id = (r->>'post_id')::bigint
 WHERE p.status = 'posted' AND p.body = r->>'text' AND p.remote_id LIKE 'file:%';
SQL
check "demo: every line is its posted post's exact text" test "$(cat "$T/file.out")" = "$(wc -l <"$BTL_POSTS_FILE")"
check "demo: no post in the file twice" bash -c \
    "[ \$(jq -s '[.[].post_id] | unique | length' '$BTL_POSTS_FILE') -eq \$(wc -l <'$BTL_POSTS_FILE') ]"

for s in d-curator d-generator d-scheduler; do
    stop_wait "$s"
    check "$s exits 0 on SIGTERM (got $STOP_STATUS)" test "$STOP_STATUS" = 0
done
finish
