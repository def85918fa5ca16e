#!/usr/bin/env bash
# The generator end to end with real processes: scheduler + 2 generator
# replicas with the offline LLM provider. A trigger of a carousel task with
# iterations 2 fans out into 2 x 5 generate.post jobs shared by the
# replicas and yields 10 pending posts (or fewer plus counted duplicates),
# each <= 1,800 characters with narrative and angle; post.generated events
# reach the bus. A narrative that always says the same thing exercises
# bot-command acts and duplicate counting; a broken narrative file pauses
# its task as unrecoverable.
source "$(dirname "$0")/lib.sh"
btl_setup

CAROUSEL="$BTL_SRC/config/narratives/generation_carousel.yaml"

# Same text every time: a bot command (state.get with a default) as the
# final act, two narratives sharing the top-level acts.
cat >"$T/same.yaml" <<'EOF2'
acts:
  - name: fixed
    command: state.get
    args: { key: "gen_test.fixed", default: { text: "  Always the SAME post.\n" } }
    expect: json
    required: [text]
narratives:
  - { name: same_a, angle: feature }
  - { name: same_b, angle: usecase }
EOF2
cat >"$T/broken.yaml" <<'EOF2'
acts:
  - name: only
    prompt: "{{act.later}}"
  - name: later
    prompt: x
EOF2
# Valid at load time, but the audit act refuses every post.
cat >"$T/refuse.yaml" <<'EOF2'
acts:
  - name: audit
    command: state.get
    args: { key: "gen_test.refuse", default: { text: "t", ok: false, reason: "invented facts" } }
    expect: json
EOF2

write_config "$T/btl.yaml" <<EOF2
scheduler: { check_interval: 200ms }
worker: { concurrency: 2, lease: 30s, poll_fallback: 300ms, batch_size: 1 }
providers:
  llm: { kind: offline, model: offline }
tasks:
  generation:
    service: generator
    schedule: "once 2099-01-01T00:00:00Z"
    narrative: "$CAROUSEL"
    iterations: 2
  samegen:
    service: generator
    schedule: "once 2099-01-01T00:00:00Z"
    narrative: "$T/same.yaml"
    iterations: 2
  refusegen:
    service: generator
    schedule: "once 2099-01-01T00:00:00Z"
    narrative: "$T/refuse.yaml"
  brokengen:
    service: generator
    schedule: "once 2099-01-01T00:00:00Z"
    narrative: "$T/broken.yaml"
    execution: { max_retries: 0, stop_on_unrecoverable: true }
EOF2

check "btl validate names the broken narrative's position" bash -c \
    "'$BTL_BUILD/btl' validate '$T/btl.yaml' 2>&1 | grep -q 'broken.yaml:3:14: prompt: act .later. runs later'"

start scheduler btl-scheduler --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_SCHED" --instance sched-a
start gen-a btl-generator --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_GEN" --instance gen-a
start gen-b btl-generator --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_CUR" --instance gen-b
for p in $HTTP_SCHED $HTTP_GEN $HTTP_CUR; do
    check "ready on :$p" wait_for "ready :$p" 30 http_ok "$p" /health/ready
done

# Subscribe to post.generated before anything is generated.
nngcat --sub --dial "tcp://127.0.0.1:$PUB_PORT" --subscribe post.generated --quoted \
    >"$T/events.out" 2>"$T/nngcat.log" &
PIDS+=("$!")
# A subscriber connected means later events reach it: wait for the
# scheduler to count it (the PUB side has no ack; a tick proves the path).
check "event subscriber connected" wait_for "sub connect" 10 bash -c \
    "ss -tn state established '( dport = :$PUB_PORT )' | grep -q ':$PUB_PORT'"

reply=$(control 'trigger generation')
log "trigger reply: $reply"
run_id=$(sed -n 's/.*"run_id":\([0-9]*\).*/\1/p' <<<"$reply")
check "trigger returns a run id" test -n "$run_id"
run_id=${run_id:-0}

# metric_sum PORT NAME FILTER: sum of the samples of NAME whose line matches FILTER.
metric_sum() {
    curl -fsS --max-time 5 "http://127.0.0.1:$1/metrics" |
        awk -v m="$2" -v f="$3" '($1 == m || index($1, m "{") == 1) && $0 ~ f { s += $NF } END { printf "%d\n", s }'
}
carousel_dups() {
    echo $(( $(metric_sum "$HTTP_GEN" btl_posts_duplicates_total 'feature|usecase|tutorial|community|problem_solution') +
             $(metric_sum "$HTTP_CUR" btl_posts_duplicates_total 'feature|usecase|tutorial|community|problem_solution') ))
}
posts_plus_dups() {
    local posts dups
    posts=$(sql "SELECT count(*) FROM posts WHERE run_id = $run_id")
    dups=$(carousel_dups)
    [ $((posts + dups)) -eq 10 ]
}

check "all 11 jobs of the run done (1 plan + 10 posts)" wait_for "jobs done" 90 \
    sql_eq "SELECT count(*) FROM jobs WHERE run_id = $run_id AND status = 'done'" 11
check "10 generate.post jobs, one per narrative and iteration" sql_eq \
    "SELECT count(DISTINCT (payload->>'narrative') || ':' || (payload->>'iteration')) FROM jobs WHERE run_id = $run_id AND kind = 'generate.post'" 10
check "posts + duplicates == 10" wait_for "posts+dups" 10 posts_plus_dups
log "posts: $(sql "SELECT count(*) FROM posts WHERE run_id = $run_id"), duplicates: $(carousel_dups)"
check "at least one post written" sql_ge "SELECT count(*) FROM posts WHERE run_id = $run_id" 1
check "every post pending" sql_eq "SELECT count(*) FROM posts WHERE run_id = $run_id AND status <> 'pending'" 0
check "every body 1..1800 characters" sql_eq \
    "SELECT count(*) FROM posts WHERE run_id = $run_id AND (char_length(body) > 1800 OR char_length(btrim(body)) = 0)" 0
check "content hashes distinct and sha256-sized" sql_eq \
    "SELECT count(DISTINCT content_hash) = count(*) AND bool_and(length(content_hash) = 64) FROM posts WHERE run_id = $run_id" t
check "narrative and angle set, angle matches narrative" sql_eq \
    "SELECT count(*) FROM posts WHERE run_id = $run_id AND (narrative IS NULL OR angle IS NULL OR angle <> narrative)" 0
check "post metadata records the acts" sql_eq \
    "SELECT bool_and(jsonb_array_length(metadata->'acts') = 5 AND metadata->>'provider' = 'offline') FROM posts WHERE run_id = $run_id" t
check "texts vary" sql_ge "SELECT count(DISTINCT left(body, 60)) FROM posts WHERE run_id = $run_id" 2
check "executions recorded, none failed" wait_for "executions" 20 bash -c \
    "[ \"\$(psql '$DATABASE_URL' -qAtX -c \"SELECT count(*) FILTER (WHERE success) > 0 AND count(*) FILTER (WHERE NOT success) = 0 FROM executions WHERE run_id = $run_id\")\" = t ]"
check "executions count every post job" wait_for "items" 20 \
    sql_eq "SELECT sum(items_ok + items_skipped) FROM executions WHERE run_id = $run_id" 11
log "replicas that wrote posts: $(sql "SELECT string_agg(DISTINCT metadata->>'instance', ',') FROM posts WHERE run_id = $run_id")"
check "post.generated events on the bus" wait_for "events" 15 bash -c "[ \$(wc -l <'$T/events.out') -ge 1 ]"
check "events carry the post text" grep -q 'pending' "$T/events.out"
gen_total=$(( $(metric_sum "$HTTP_GEN" btl_posts_generated_total '') + $(metric_sum "$HTTP_CUR" btl_posts_generated_total '') ))
check "btl_posts_generated_total matches the rows ($gen_total)" \
    sql_eq "SELECT count(*) FROM posts WHERE run_id = $run_id" "$gen_total"

# Replanning the same run (a redelivered plan job) adds nothing.
check "replanned run enqueued" sql \
    "INSERT INTO jobs (queue, kind, task_id, run_id, payload) VALUES ('generator', 'generate', 'generation', $run_id, '{\"task\":\"generation\"}')"
check "replan job done" wait_for "replan" 30 \
    sql_eq "SELECT count(*) FROM jobs WHERE run_id = $run_id AND status = 'done'" 12
check "still 10 generate.post jobs" \
    sql_eq "SELECT count(*) FROM jobs WHERE run_id = $run_id AND kind = 'generate.post'" 10

# Identical text from four jobs: one post, three counted duplicates.
reply=$(control 'trigger samegen')
same_run=$(sed -n 's/.*"run_id":\([0-9]*\).*/\1/p' <<<"$reply")
same_run=${same_run:-0}
check "samegen jobs done" wait_for "samegen" 60 \
    sql_eq "SELECT count(*) FROM jobs WHERE run_id = $same_run AND status = 'done'" 5
check "one post for four identical texts" sql_eq "SELECT count(*) FROM posts WHERE task_id = 'samegen'" 1
check "its body is trimmed" sql_eq "SELECT body FROM posts WHERE task_id = 'samegen'" "Always the SAME post."
check "three duplicates counted" wait_for "dups" 10 bash -c \
    "[ \$(( \$(curl -fsS http://127.0.0.1:$HTTP_GEN/metrics | awk '/^btl_posts_duplicates_total\\{narrative=\"same_/ {s+=\$NF} END {print s+0}') + \$(curl -fsS http://127.0.0.1:$HTTP_CUR/metrics | awk '/^btl_posts_duplicates_total\\{narrative=\"same_/ {s+=\$NF} END {print s+0}') )) -eq 3 ]"

# The audit says no: the job completes as skipped, no post.
reply=$(control 'trigger refusegen')
ref_run=$(sed -n 's/.*"run_id":\([0-9]*\).*/\1/p' <<<"$reply")
ref_run=${ref_run:-0}
check "refused post's job done" wait_for "refuse" 60 \
    sql_eq "SELECT count(*) FROM jobs WHERE run_id = $ref_run AND status = 'done'" 2
check "no post written for a refused audit" sql_eq "SELECT count(*) FROM posts WHERE task_id = 'refusegen'" 0
check "refusal counted as skipped" wait_for "skipped exec" 20 \
    sql_ge "SELECT coalesce(sum(items_skipped), 0) FROM executions WHERE run_id = $ref_run AND success" 1

# A broken narrative file is unrecoverable: the task pauses at once.
control 'trigger brokengen' >/dev/null
check "broken narrative pauses its task" wait_for "broken paused" 30 \
    sql_eq "SELECT is_paused FROM tasks WHERE task_id = 'brokengen'" t
check "pause reason names the position" bash -c \
    "psql '$DATABASE_URL' -Atc \"SELECT paused_reason FROM tasks WHERE task_id='brokengen'\" | grep -q 'broken.yaml:3:14'"

for s in gen-a gen-b scheduler; do
    stop_wait "$s"
    check "$s exits 0 on SIGTERM (got $STOP_STATUS)" test "$STOP_STATUS" = 0
done
finish
