#!/usr/bin/env bash
# The curator end to end with real processes: pre-filters reject with the
# right reasons before any LLM call, scoring stores all five criteria, auto
# mode approves at most select_top (score >= min_score) and rejects the rest,
# min_score rejects, keep_unselected keeps, manual mode only scores, a
# post.generated event wakes the curator without a trigger (once per event),
# post.approved/rejected events reach subscribers; then SCALE: 3 curators on
# 1,000 pending posts decide every post exactly once, share the work, and a
# fanned-out run still approves at most select_top. GENERATION RUNS: posts of
# one generation run arriving one by one as events, with two curators, are
# scored as they come but approved only once the run's generate jobs have
# ended (done or dead), at most select_top per generation run, also when a
# scheduled run and the run's closing job race or decide it in turns.
# LLM: the fake OpenAI-compatible server when built ($BTL_BUILD/fake_llm),
# else the built-in offline provider (both score "### POST" blocks).
source "$(dirname "$0")/lib.sh"
btl_setup

export FAKE_KEY=test-key
# fake_llm_cfg NAME ARGS...: start a fake LLM server, print its providers.llm.
fake_llm_cfg() {
    local name=$1 port; shift
    port=$(free_port)
    start "$name" fake_llm --port "$port" --record "$T/$name.jsonl" "$@"
    wait_for "$name listening" 20 grep -q listening "$T/$name.log" || fail "$name did not start"
    echo "{ kind: openai, base_url: \"http://127.0.0.1:$port/v1\", model: fake, api_key_env: FAKE_KEY, timeout: 5s }"
}
if [ -x "$BTL_BUILD/fake_llm" ]; then
    fake_llm_cfg fake_llm >"$T/llm.cfg"
    LLM_CFG=$(cat "$T/llm.cfg")
else
    LLM_CFG="{ kind: offline, model: offline }"
fi
log "llm: $LLM_CFG"

# Tasks never fire by themselves (once 2099): the test triggers them.
cur_task() { # name extra-curation-yaml [execution] [fanout]
    cat <<EOC
  $1:
    service: curator
    schedule: "once 2099-01-01T00:00:00Z"
    fanout: ${4:-1}
    execution: { strategy: ${3:-drain_queue}, max_retries: 1 }
    curation: { batch_size: 5, on_event: false, $2 }
EOC
}
make_config() { # llm-cfg file [on-event task: cur_event | cur_gen]
    local ev=${3:-cur_event}
    {
    cat <<EOC
scheduler: { check_interval: 200ms, failover: 2s }
worker: { concurrency: 2, lease: 10s, poll_fallback: 500ms, batch_size: 1 }
providers:
  llm: $1
tasks:
EOC
    cur_task cur_auto 'min_score: 5, select_top: 2, max_chars: 280, banned_phrases: ["crypto giveaway"], near_duplicate: { days: 30, threshold: 0.8 }'
    cur_task cur_strict 'select_top: 3, min_score: 50'
    cur_task cur_keep 'min_score: 5, select_top: 1, keep_unselected: true'
    cur_task cur_manual 'mode: manual'
    cur_task cur_single 'min_score: 5, select_top: 10' single_run
    cat <<EOC
  cur_event:
    service: curator
    schedule: "once 2099-01-01T00:00:00Z"
    curation: { batch_size: 5, on_event: $([ "$ev" = cur_event ] && echo true || echo false), min_score: 5, select_top: 5 }
  cur_gen:
    service: curator
    schedule: "once 2099-01-01T00:00:00Z"
    fanout: 2
    execution: { strategy: drain_queue, max_retries: 1 }
    curation: { batch_size: 2, on_event: $([ "$ev" = cur_gen ] && echo true || echo false), min_score: 5, select_top: 2 }
EOC
    cur_task cur_scale 'min_score: 5, select_top: 3' drain_queue 6
    } | write_config "$2"
}
make_config "$LLM_CFG" "$T/btl.yaml"

start scheduler btl-scheduler --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_SCHED" --instance sched-a
start cur-a btl-curator --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_CUR" --instance cur-a
check "scheduler ready" wait_for "scheduler ready" 30 http_ok "$HTTP_SCHED" /health/ready
check "curator ready" wait_for "curator ready" 30 http_ok "$HTTP_CUR" /health/ready

# Every post.approved / post.rejected as the scheduler re-publishes it.
nngcat --sub --dial "tcp://127.0.0.1:$PUB_PORT" --subscribe post.approved \
    --subscribe post.rejected --quoted >"$T/events.txt" 2>/dev/null &
PIDS+=("$!")
events() { grep -c "^\"$1 " "$T/events.txt" || true; }

ins() { # body [status] -> id
    sql "INSERT INTO posts (content_hash, body, narrative, status, curated_at)
         VALUES (md5(\$b\$$1\$b\$ || clock_timestamp()::text || random()::text), \$b\$$1\$b\$, 'test', '${2:-pending}',
                 CASE WHEN '${2:-pending}' = 'pending' THEN NULL ELSE now() END) RETURNING id" | head -1
}
trigger() {
    local reply; reply=$(control "trigger $1")
    grep -q '"ok":true' <<<"$reply" || { log "trigger $1: $reply"; return 1; }
}
no_pending() { sql_eq "SELECT count(*) FROM posts WHERE status = 'pending' AND curated_at IS NULL" 0; }
reason_of() { sql "SELECT reject_reason FROM posts WHERE id = $1"; }

# ---- auto mode: pre-filters, scoring, selection -----------------------------
REF=$(ins "Release notes for version two: the scheduler now honours posting windows, the curator scores posts in batches and the poster never posts twice." approved)
EMPTY=$(ins "   ")
LONG=$(ins "$(printf 'lorem ipsum dolor %.0s' $(seq 1 20))")
BANNED=$(ins "Huge CRYPTO Giveaway tonight, join the server and tell your friends about it")
NEARDUP=$(ins "Release notes for version two: the scheduler now honours posting windows, the curator scores posts in batches and the poster never posts twice!")
NORMAL=()
for t in "How we cut our build time in half: cache the dependency layer, run tests in parallel, and profile before you optimise. What is your best trick?" \
    "Tip of the day: use btl schedule next to preview a cron expression before you deploy it." \
    "Community spotlight: thanks to everyone who reported bugs this week, 14 fixes landed because of you." \
    "Problem: posts at 3 a.m. nobody reads. Solution: posting windows per timezone. Here is how to set one up in two lines of YAML." \
    "Did you know the curator rejects near-duplicate posts automatically? It compares word shingles against everything approved in the last 30 days." \
    "New tutorial: run the whole pipeline offline with make run and watch posts appear in var/posts.log within a minute."; do
    NORMAL+=("$(ins "$t")")
done
NORMAL_IDS=$(IFS=,; echo "${NORMAL[*]}")

check "trigger cur_auto" trigger cur_auto
check "every pending post decided" wait_for "auto drain" 60 no_pending
check "empty rejected" test "$(reason_of "$EMPTY")" = "empty"
check "over-long rejected with code point count" test "$(reason_of "$LONG")" = "too long: 360 characters > max_chars 280"
check "banned phrase rejected" test "$(reason_of "$BANNED")" = 'banned phrase "crypto giveaway"'
r=$(reason_of "$NEARDUP"); log "near-dup reason: $r"
check "near-duplicate of the approved post rejected" grep -Eq "^near-duplicate of post $REF \((0\.[89][0-9]|1\.00)\)$" <<<"$r"
check "pre-filtered posts were not scored" sql_eq "SELECT count(*) FROM posts WHERE id IN ($EMPTY,$LONG,$BANNED,$NEARDUP) AND status = 'rejected' AND scores IS NULL" 4
check "exactly select_top (2) approved" sql_eq "SELECT count(*) FROM posts WHERE id IN ($NORMAL_IDS) AND status = 'approved'" 2
check "approved ones are the best scored" sql_eq "SELECT count(*) FROM posts a, posts b WHERE a.id IN ($NORMAL_IDS) AND b.id IN ($NORMAL_IDS) AND a.status = 'approved' AND b.status = 'rejected' AND b.score > a.score" 0
check "the rest rejected as not in top 2" sql_eq "SELECT count(*) FROM posts WHERE id IN ($NORMAL_IDS) AND status = 'rejected' AND reject_reason LIKE 'not in top 2 (score %/50)'" 4
check "scores jsonb has all five criteria" sql_eq "SELECT count(*) FROM posts WHERE id IN ($NORMAL_IDS) AND scores ?& array['engagement','clarity','value','tone','polish','strengths','weaknesses']" 6
check "score is the sum of the criteria (5..50)" sql_eq "SELECT count(*) FROM posts WHERE id IN ($NORMAL_IDS) AND score = (scores->>'engagement')::int + (scores->>'clarity')::int + (scores->>'value')::int + (scores->>'tone')::int + (scores->>'polish')::int AND score BETWEEN 5 AND 50" 6
check "every criterion within 1..10" sql_eq "SELECT count(*) FROM posts, jsonb_each(scores) e WHERE id IN ($NORMAL_IDS) AND e.key NOT IN ('strengths','weaknesses','total') AND (e.value::text::int NOT BETWEEN 1 AND 10)" 0
check "each decided once, by cur-a, claim released" sql_eq "SELECT count(*) FROM posts WHERE id IN ($EMPTY,$LONG,$BANNED,$NEARDUP,$NORMAL_IDS) AND (metadata->>'curate_decisions')::int = 1 AND metadata->>'curated_by' = 'cur-a' AND claimed_by IS NULL AND curated_at IS NOT NULL" 10
check "post.approved events (2)" wait_for "approved events" 10 test "$(events post.approved)" -eq 2
check "post.rejected events (8)" wait_for "rejected events" 10 test "$(events post.rejected)" -eq 8
check "execution recorded ok" wait_for "execution" 10 sql_ge "SELECT count(*) FROM executions WHERE task_id = 'cur_auto' AND success" 1
check "metric posts_curated_total" test "$(metric "$HTTP_CUR" btl_posts_curated_total)" -eq 10
check "metric prefilter rejections" test "$(metric "$HTTP_CUR" btl_curator_prefilter_rejected_total)" -eq 4

# ---- min_score: below it nothing is approved ----------------------------------
S=(); for i in 1 2 3; do S+=("$(ins "Strict round post $i: a plain statement about release $i of the tool with some detail $RANDOM.")"); done
S_IDS=$(IFS=,; echo "${S[*]}")
check "trigger cur_strict" trigger cur_strict
check "strict: decided" wait_for "strict" 30 no_pending
check "strict: below 50 rejected with the score" sql_eq "SELECT count(*) FROM posts WHERE id IN ($S_IDS) AND ((score < 50 AND status = 'rejected' AND reject_reason = 'score ' || score::int || '/50 below min_score 50') OR (score = 50 AND status = 'approved'))" 3

# ---- keep_unselected ------------------------------------------------------------
K=(); for i in 1 2 3; do K+=("$(ins "Keep round post $i: notes on the queue, leases and retries, number $i, $RANDOM.")"); done
K_IDS=$(IFS=,; echo "${K[*]}")
check "trigger cur_keep" trigger cur_keep
check "keep: decided" wait_for "keep" 30 no_pending
check "keep: one approved" sql_eq "SELECT count(*) FROM posts WHERE id IN ($K_IDS) AND status = 'approved'" 1
check "keep: others pending with scores, not rejected" sql_eq "SELECT count(*) FROM posts WHERE id IN ($K_IDS) AND status = 'pending' AND scores IS NOT NULL AND curated_at IS NOT NULL AND reject_reason IS NULL" 2

# ---- a draining run takes the posts generated before it started ----------------------
# A post stamped an hour ahead stands for one that arrives while the run
# drains: it waits for a later run instead of holding the run's decisions.
LATE=$(ins "Late arrival: a post generated after the curation run began, $RANDOM.")
ON_TIME=$(ins "On time: a post that was pending when the curation run began, $RANDOM.")
sql "UPDATE posts SET generated_at = now() + interval '1 hour' WHERE id = $LATE" >/dev/null
check "trigger cur_strict (one late post)" trigger cur_strict
check "late: the on-time post decided" wait_for "on-time decided" 30 \
    sql_eq "SELECT count(*) FROM posts WHERE id = $ON_TIME AND curated_at IS NOT NULL" 1
check "late: the later post left pending, unclaimed" sql_eq \
    "SELECT count(*) FROM posts WHERE id = $LATE AND status = 'pending' AND curated_at IS NULL AND claimed_by IS NULL" 1
sql "UPDATE posts SET generated_at = now() - interval '1 second' WHERE id = $LATE" >/dev/null
check "trigger cur_strict (the late post's turn)" trigger cur_strict
check "late: decided by the next run" wait_for "late decided" 30 no_pending

# ---- manual mode: scores only -------------------------------------------------------
M=(); for i in 1 2 3; do M+=("$(ins "Manual round post $i: an operator will decide about this one, $RANDOM.")"); done
M_IDS=$(IFS=,; echo "${M[*]}")
check "trigger cur_manual" trigger cur_manual
check "manual: scored" wait_for "manual" 30 no_pending
check "manual: all pending with five scores" sql_eq "SELECT count(*) FROM posts WHERE id IN ($M_IDS) AND status = 'pending' AND scores ?& array['engagement','clarity','value','tone','polish'] AND score IS NOT NULL" 3
before=$(sql "SELECT string_agg(curated_at::text, ',' ORDER BY id) FROM posts WHERE id IN ($M_IDS)")
sql "SELECT count(*) FROM executions WHERE task_id = 'cur_manual'" >"$T/n_exec"
check "trigger cur_manual again" trigger cur_manual
check "second manual run recorded" wait_for "manual 2" 20 sql_ge "SELECT count(*) FROM executions WHERE task_id = 'cur_manual'" $(( $(cat "$T/n_exec") + 1 ))
check "manual: scored posts are not scored again" test "$before" = "$(sql "SELECT string_agg(curated_at::text, ',' ORDER BY id) FROM posts WHERE id IN ($M_IDS)")"

# ---- single_run: one batch per run --------------------------------------------------
G=(); for i in $(seq 1 7); do G+=("$(ins "Single run post $i: $(md5sum <<<"$i$RANDOM" | cut -c1-12) words go here $i")"); done
check "trigger cur_single" trigger cur_single
check "single_run: one batch (5) decided" wait_for "single" 30 sql_eq "SELECT count(*) FROM posts WHERE status = 'pending' AND curated_at IS NULL" 2
check "single_run: the oldest five first" sql_eq "SELECT count(*) FROM posts WHERE id IN ($(IFS=,; echo "${G[*]:0:5}")) AND curated_at IS NOT NULL" 5
check "trigger cur_single again" trigger cur_single
check "single_run: the rest next run" wait_for "single 2" 30 no_pending

# ---- on_event: post.generated wakes the curator ---------------------------------------
E=$(ins "Event driven: this post was just generated and should be curated without any trigger.")
"$BTL_BUILD/mkframe" "$T/gen.frame" post.generated "$E" "Event driven post"
push_frame() { nngcat --push --dial "tcp://127.0.0.1:$COLLECT_PORT" --file "$T/gen.frame" 2>/dev/null; }
check "push post.generated" push_frame
check "event: post decided without a trigger" wait_for "event curation" 30 sql_eq "SELECT status FROM posts WHERE id = $E" approved
check "event: one curate job with the event key" sql_eq "SELECT count(*) FROM jobs WHERE unique_key = 'event:cur_event:$E' AND kind = 'curate' AND queue = 'curator'" 1
check "event: only tasks with on_event enqueue" sql_eq "SELECT count(*) FROM jobs WHERE unique_key LIKE 'event:%' AND task_id <> 'cur_event'" 0
push_frame
"$BTL_BUILD/mkframe" "$T/gen.frame" post.generated 999999 "another"
push_frame
check "event: a new post id enqueues again" wait_for "second event job" 20 sql_eq "SELECT count(*) FROM jobs WHERE unique_key = 'event:cur_event:999999'" 1
check "event: the same event twice is one job" sql_eq "SELECT count(*) FROM jobs WHERE unique_key = 'event:cur_event:$E'" 1
# Event jobs start a few seconds late (to gather a burst): let them finish so
# they cannot take posts meant for the sections below.
check "event: event jobs finished" wait_for "event jobs done" 30 sql_eq "SELECT count(*) FROM jobs WHERE unique_key LIKE 'event:%' AND status IN ('queued', 'running')" 0
check "event: the burst job ran late, after the delay" sql_eq "SELECT count(*) FROM jobs WHERE unique_key = 'event:cur_event:999999' AND run_after >= created_at + interval '2 seconds'" 1

# ---- SCALE: 3 curators, 1,000 posts, fanout 6 ------------------------------------------
HTTP_CUR_B=$(free_port); HTTP_CUR_C=$(free_port)
start cur-b btl-curator --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_CUR_B" --instance cur-b
start cur-c btl-curator --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_CUR_C" --instance cur-c
check "cur-b ready" wait_for "cur-b" 30 http_ok "$HTTP_CUR_B" /health/ready
check "cur-c ready" wait_for "cur-c" 30 http_ok "$HTTP_CUR_C" /health/ready
# Distinct texts: no two are near-duplicates of each other or of earlier posts.
sql "INSERT INTO posts (content_hash, body, narrative, status, metadata)
     SELECT md5('scale' || i), 'Scale post ' || i || ': ' || md5(i::text) || ' ' || md5((i * 7)::text) || ' notes on release ' || (i % 13) || ' and ' || md5((i * 31)::text) || '.', 'scale', 'pending', '{\"scale\": true}'
     FROM generate_series(1, 1000) i"
sent_events() {
    local s=0 p
    for p in "$@"; do
        s=$(( s + $(curl -fsS --max-time 5 "http://127.0.0.1:$p/metrics" | awk '/^btl_curator_events_total\{outcome="sent"\}/ {s += $NF} END {printf "%d", s}') ))
    done
    echo "$s"
}
evb=$(sent_events "$HTTP_CUR")
t0=$(date +%s)
check "trigger cur_scale" trigger cur_scale
check "scale: every post decided within 90 s" wait_for "scale drain" 90 no_pending
log "scale drain took $(( $(date +%s) - t0 )) s"
SC="metadata->>'scale' = 'true'"
check "scale: 1000 decided, each exactly once" sql_eq "SELECT count(*) FROM posts WHERE $SC AND status IN ('approved','rejected') AND (metadata->>'curate_decisions')::int = 1 AND claimed_by IS NULL" 1000
check "scale: the run approved at most select_top (3) across 6 jobs" sql_eq "SELECT count(*) FROM posts WHERE $SC AND status = 'approved'" 3
check "scale: the rest rejected with a reason" sql_eq "SELECT count(*) FROM posts WHERE $SC AND status = 'rejected' AND reject_reason IS NOT NULL" 997
split=$(sql "SELECT string_agg(c || '=' || n, ' ' ORDER BY c) FROM (SELECT metadata->>'curated_by' c, count(*) n FROM posts WHERE $SC AND (metadata->>'curate_outcome') IS NOT NULL GROUP BY 1) x")
log "scale split: $split"
check "scale: work split across the 3 curators" sql_eq "SELECT count(DISTINCT metadata->>'curated_by') FROM posts WHERE $SC" 3
check "scale: executions from all 3 instances" wait_for "executions" 20 sql_eq "SELECT count(DISTINCT instance) FROM executions WHERE task_id = 'cur_scale' AND success" 3
sent=$(( $(sent_events "$HTTP_CUR" "$HTTP_CUR_B" "$HTTP_CUR_C") - evb ))
check "scale: one event per decision delivered ($sent)" test "$sent" -eq 1000

for s in cur-a cur-b cur-c; do
    stop_wait "$s"
    check "$s exits 0 on SIGTERM (got $STOP_STATUS)" test "$STOP_STATUS" = 0
done

# ---- LLM failures: posts stay pending, claims are given back ------------------------
if [ -x "$BTL_BUILD/fake_llm" ]; then
    F=(); for i in 1 2; do F+=("$(ins "Failure round post $i: the LLM misbehaves for this one, $RANDOM.")"); done
    F_IDS=$(IFS=,; echo "${F[*]}")
    untouched() { sql_eq "SELECT count(*) FROM posts WHERE id IN ($F_IDS) AND status = 'pending' AND scores IS NULL AND curated_at IS NULL AND claimed_by IS NULL" 2; }
    HTTP_X=$(free_port)

    # 429 on every call: rate limited → the job is snoozed until the reset
    # (queued again, no attempt used), the run is not a failure.
    fake_llm_cfg fake_rate --fail-first 1000000 --fail-status 429 --fail-kind rate --retry-after 1 >"$T/fake_rate.cfg" # not in $(...): the fake must stay in PIDS
    make_config "$(cat "$T/fake_rate.cfg")" "$T/rate.yaml"
    start cur-rate btl-curator --config "$T/rate.yaml" --http "127.0.0.1:$HTTP_X" --instance cur-rate
    check "trigger cur_keep (rate limited)" trigger cur_keep
    check "rate limited: the job is snoozed, its attempt kept" wait_for "rate snooze" 30 sql_ge "SELECT count(*) FROM jobs WHERE task_id = 'cur_keep' AND status = 'queued' AND attempts = 0 AND run_after > now() - interval '5 seconds' AND last_error LIKE '%rate limited%'" 1
    check "rate limited: the run counts it as skipped, not failed" wait_for "rate skipped" 30 sql_ge "SELECT count(*) FROM executions WHERE task_id = 'cur_keep' AND success AND items_skipped >= 1" 1
    log "rate-limited reason: $(sql "SELECT last_error FROM jobs WHERE task_id = 'cur_keep' AND last_error IS NOT NULL LIMIT 1")"
    check "rate limited: posts untouched and unclaimed" untouched
    check "rate limited: task not paused" sql_eq "SELECT is_paused FROM tasks WHERE task_id = 'cur_keep'" f
    stop_wait cur-rate
    check "cur-rate exits 0 (got $STOP_STATUS)" test "$STOP_STATUS" = 0

    # 401: unrecoverable → the task is paused at once.
    fake_llm_cfg fake_auth --fail-first 1000000 --fail-status 401 >"$T/fake_auth.cfg" # not in $(...): the fake must stay in PIDS
    make_config "$(cat "$T/fake_auth.cfg")" "$T/auth.yaml"
    start cur-auth btl-curator --config "$T/auth.yaml" --http "127.0.0.1:$HTTP_X" --instance cur-auth
    check "trigger cur_auto (401)" trigger cur_auto
    check "401: task paused as unrecoverable" wait_for "paused" 30 sql_eq "SELECT is_paused FROM tasks WHERE task_id = 'cur_auto'" t
    log "paused reason: $(sql "SELECT paused_reason FROM tasks WHERE task_id = 'cur_auto'")"
    check "401: posts untouched and unclaimed" untouched
    stop_wait cur-auth
    check "cur-auth exits 0 (got $STOP_STATUS)" test "$STOP_STATUS" = 0

    # A slow LLM and SIGTERM mid-call: exit 0 in time, claims given back.
    fake_llm_cfg fake_slow --delay-ms 3000 >"$T/fake_slow.cfg" # not in $(...): the fake must stay in PIDS
    make_config "$(cat "$T/fake_slow.cfg")" "$T/slow.yaml"
    start cur-slow btl-curator --config "$T/slow.yaml" --http "127.0.0.1:$HTTP_X" --instance cur-slow
    check "cur-slow ready" wait_for "cur-slow" 30 http_ok "$HTTP_X" /health/ready
    check "trigger cur_strict (slow)" trigger cur_strict
    check "slow: posts claimed by cur-slow" wait_for "claimed" 20 sql_eq "SELECT count(*) FROM posts WHERE id IN ($F_IDS) AND claimed_by LIKE 'cur-slow#%'" 2
    stop_wait cur-slow
    check "cur-slow exits 0 within 10 s mid-call (got $STOP_STATUS)" test "$STOP_STATUS" = 0
    check "slow: claims given back, nothing decided" sql_eq "SELECT count(*) FROM posts WHERE id IN ($F_IDS) AND status = 'pending' AND curated_at IS NULL AND claimed_by IS NULL" 2
    log "slow: scored before the stop: $(sql "SELECT count(*) FROM posts WHERE id IN ($F_IDS) AND scores IS NOT NULL")"

    # A healthy curator finishes them.
    start cur-a2 btl-curator --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_X" --instance cur-a2
    check "recovery: decided by a healthy curator" wait_for "recovery" 30 sql_eq "SELECT count(*) FROM posts WHERE id IN ($F_IDS) AND curated_at IS NOT NULL AND metadata->>'curated_by' = 'cur-a2'" 2
    stop_wait cur-a2
    check "cur-a2 exits 0 (got $STOP_STATUS)" test "$STOP_STATUS" = 0
fi

# ---- GENERATION RUNS: select_top per generation run, event-woken ----------------------
# Two curators whose config wakes cur_gen (select_top 2, batch_size 2) on
# post.generated; the scheduler's copy only matters for `trigger cur_gen`.
# A generation run is simulated the way the generator leaves it in the
# database: a task_runs row, its generate.post jobs (running / queued), and
# posts carrying its run_id, each announced by a post.generated event.
# The LLM answers in 0.7 s here, so that concurrent jobs hold posts at once.
GEN_SLOW=0
if [ -x "$BTL_BUILD/fake_llm" ]; then
    fake_llm_cfg fake_gen --delay-ms 700 >"$T/fake_gen.cfg" # not in $(...): the fake must stay in PIDS
    make_config "$(cat "$T/fake_gen.cfg")" "$T/gen.yaml" cur_gen
    GEN_SLOW=1
else
    make_config "$LLM_CFG" "$T/gen.yaml" cur_gen
fi
HTTP_G1=$(free_port); HTTP_G2=$(free_port)
start cur-g1 btl-curator --config "$T/gen.yaml" --http "127.0.0.1:$HTTP_G1" --instance cur-g1
start cur-g2 btl-curator --config "$T/gen.yaml" --http "127.0.0.1:$HTTP_G2" --instance cur-g2
check "cur-g1 ready" wait_for "cur-g1" 30 http_ok "$HTTP_G1" /health/ready
check "cur-g2 ready" wait_for "cur-g2" 30 http_ok "$HTTP_G2" /health/ready
gen_run() { # -> run id of a new generation run with one running and one queued generate job
    local r
    r=$(sql "INSERT INTO task_runs (task_id, due_at, reason, status) VALUES ('gen_sim', now(), 'manual', 'running') RETURNING run_id" | head -1)
    sql "INSERT INTO jobs (queue, kind, task_id, run_id, status, attempts, locked_by, lease_until)
         VALUES ('generator', 'generate.post', 'gen_sim', $r, 'running', 1, 'gen-sim', now() + interval '1 hour'),
                ('generator', 'generate.post', 'gen_sim', $r, 'queued', 1, NULL, NULL)" >/dev/null
    sql "UPDATE jobs SET run_after = now() + interval '1 hour' WHERE run_id = $r AND status = 'queued'" >/dev/null
    echo "$r"
}
gen_post() { # run i [quiet] -> id: a generated post of the run, announced by post.generated (quiet: not)
    local id
    id=$(sql "INSERT INTO posts (content_hash, body, narrative, status, task_id, run_id)
              VALUES (md5('gen' || $1 || ':' || $2), 'Generation run $1, post $2: ' || md5('a' || $1 || $2) || ' on ' || md5('b' || $1 || $2) || ', then ' || md5('c' || $1 || $2) || '.', 'gen', 'pending', 'gen_sim', $1)
              RETURNING id" | head -1)
    if [ "${3:-}" != quiet ]; then
        "$BTL_BUILD/mkframe" "$T/gen-$id.frame" post.generated "$id" "generated" >/dev/null
        nngcat --push --dial "tcp://127.0.0.1:$COLLECT_PORT" --file "$T/gen-$id.frame" 2>/dev/null
    fi
    echo "$id"
}
end_run() { # run: the running generate job ends done, the queued one dead
    sql "UPDATE jobs SET status = CASE status WHEN 'running' THEN 'done' ELSE 'dead' END, finished_at = now(),
                lease_until = NULL, last_error = CASE status WHEN 'queued' THEN 'simulated: out of attempts' END
         WHERE run_id = $1 AND status IN ('queued', 'running')" >/dev/null
}
scored_waiting() { # run n: n posts of the run scored, undecided, unclaimed
    sql_eq "SELECT count(*) FROM posts WHERE run_id = $1 AND status = 'pending' AND scores IS NOT NULL AND curated_at IS NULL AND claimed_by IS NULL" "$2"
}
decided() { sql_eq "SELECT count(*) FROM posts WHERE run_id = $1 AND curated_at IS NOT NULL" "$2"; }
approved_of() { sql "SELECT count(*) FROM posts WHERE run_id = $1 AND status = 'approved'"; }
closer_done() { sql_eq "SELECT status FROM jobs WHERE unique_key = 'event:cur_gen:run:$1'" done; }

# Run 1: six posts one by one, each woken and scored by its own event job
# while the run is still generating; none may be approved before the run ends.
R1=$(gen_run)
for i in 1 2 3 4 5 6; do
    id=$(gen_post "$R1" "$i")
    check "run 1: post $i scored by its event while the run generates" wait_for "r1 post $i" 30 \
        sql_eq "SELECT count(*) FROM posts WHERE id = $id AND scores IS NOT NULL AND claimed_by IS NULL" 1
done
check "run 1: no post approved while the run still generates" test "$(approved_of "$R1")" = 0
check "run 1: all six scored and waiting, undecided" scored_waiting "$R1" 6
check "run 1: one event job per post" wait_for "r1 event jobs" 10 sql_eq "SELECT count(*) FROM jobs WHERE unique_key LIKE 'event:cur_gen:%' AND unique_key NOT LIKE 'event:cur_gen:run:%' AND status = 'done'" 6
check "run 1: one closing job, waiting for the run to end" wait_for "closer snoozed" 20 \
    sql_eq "SELECT count(*) FROM jobs WHERE unique_key = 'event:cur_gen:run:$R1' AND status = 'queued' AND attempts = 0 AND last_error LIKE '%still has generate jobs queued or running%'" 1
log "run 1 closer: $(sql "SELECT last_error FROM jobs WHERE unique_key = 'event:cur_gen:run:$R1'")"
end_run "$R1"
check "run 1: decided once its jobs ended (one done, one dead)" wait_for "r1 decided" 30 decided "$R1" 6
check "run 1: exactly select_top (2) approved" test "$(approved_of "$R1")" = 2
check "run 1: the approved are the run's best" sql_eq "SELECT count(*) FROM posts a, posts b WHERE a.run_id = $R1 AND b.run_id = $R1 AND a.status = 'approved' AND b.status = 'rejected' AND b.score > a.score" 0
check "run 1: the rest rejected as not in top 2" sql_eq "SELECT count(*) FROM posts WHERE run_id = $R1 AND status = 'rejected' AND reject_reason LIKE 'not in top 2 (score %/50)'" 4
check "run 1: decided together, once each, unclaimed" sql_eq "SELECT count(DISTINCT curated_at) || ' ' || count(*) FILTER (WHERE (metadata->>'curate_decisions')::int = 1 AND claimed_by IS NULL) FROM posts WHERE run_id = $R1" "1 6"
check "run 1: the closing job finished" wait_for "r1 closer done" 20 closer_done "$R1"

# Run 2: eight posts whose events were lost (no event job, no closing job)
# and a run that has ended; two scheduled runs (fanout 2 each: four jobs on
# the two curators, each run allowed 2 approvals) are triggered together and
# split the run's posts between them while the LLM answers slowly: the
# generation run's count, kept under its lock, lets them approve 2 in total.
R2=$(gen_run)
for i in $(seq 1 8); do gen_post "$R2" "$i" quiet >/dev/null; done
end_run "$R2"
check "trigger cur_gen" trigger cur_gen
check "trigger cur_gen again (a second curation run)" trigger cur_gen
check "run 2: all decided" wait_for "r2 decided" 60 decided "$R2" 8
check "run 2: select_top (2) approved in total" test "$(approved_of "$R2")" = 2
check "run 2: each decided exactly once" sql_eq "SELECT count(*) FROM posts WHERE run_id = $R2 AND (metadata->>'curate_decisions')::int = 1 AND claimed_by IS NULL" 8
log "run 2 decided by (curator/curation run: posts): $(sql "SELECT string_agg(k || ': ' || n, ', ') FROM (SELECT (metadata->>'curated_by') || '/' || (metadata->>'curate_run') k, count(*) n FROM posts WHERE run_id = $R2 GROUP BY 1 ORDER BY 1) x")"
if [ "$GEN_SLOW" = 1 ]; then
    check "run 2: both curation runs decided some of it (so each could have approved 2)" \
        sql_eq "SELECT count(DISTINCT metadata->>'curate_run') FROM posts WHERE run_id = $R2" 2
fi
check "run 2: no closing job (no event)" sql_eq "SELECT count(*) FROM jobs WHERE unique_key = 'event:cur_gen:run:$R2'" 0

# Run 3: a scheduled run decides the scored posts while the run still
# generates (nothing waits for the closing job); a post that comes later is
# decided by the closing job once the run ends, against the run's count.
R3=$(gen_run)
for i in 1 2 3 4; do gen_post "$R3" "$i" >/dev/null; done
check "run 3: four scored and waiting" wait_for "r3 scored" 30 scored_waiting "$R3" 4
check "trigger cur_gen (mid-run)" trigger cur_gen
check "run 3: the scheduled run decided them mid-run" wait_for "r3 decided" 30 decided "$R3" 4
check "run 3: 2 approved" test "$(approved_of "$R3")" = 2
LATE=$(gen_post "$R3" 5)
check "run 3: the late post scored and waiting" wait_for "r3 late" 30 scored_waiting "$R3" 1
end_run "$R3"
check "run 3: the late post decided after the run ended" wait_for "r3 late decided" 30 decided "$R3" 5
check "run 3: rejected: the run had its select_top already" sql_eq "SELECT status || ' ' || reject_reason FROM posts WHERE id = $LATE" "rejected not in top 2 (score $(sql "SELECT score::int FROM posts WHERE id = $LATE")/50)"
check "run 3: still 2 approved" test "$(approved_of "$R3")" = 2
check "run 3: the closing job finished" wait_for "r3 closer done" 20 closer_done "$R3"
check "no post of a generation run left undecided" sql_eq "SELECT count(*) FROM posts WHERE run_id IN ($R1, $R2, $R3) AND curated_at IS NULL" 0
for s in cur-g1 cur-g2; do
    stop_wait "$s"
    check "$s exits 0 on SIGTERM (got $STOP_STATUS)" test "$STOP_STATUS" = 0
done

stop_wait scheduler
check "scheduler exits 0 on SIGTERM (got $STOP_STATUS)" test "$STOP_STATUS" = 0
finish
