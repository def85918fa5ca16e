#!/usr/bin/env bash
# Pipeline benchmark: posts per second through generate -> curate -> post,
# end to end, with the four real service binaries on a private PostgreSQL
# cluster, the fake OpenAI-compatible LLM (tests/integration/fake_llm.c) and
# the fake Discord (tests/integration/fake_discord.c).
#
#   bash bench/pipeline.sh BUILD_DIR      (`make bench` passes ./build, a Release build)
#
# Scenarios (each on a fresh database, fresh fakes and fresh services):
#   instant  fake LLM answers at once        1 and 3 replicas of each worker
#   slow     fake LLM sleeps --delay-ms 50   1 and 3 replicas of each worker
# One generation trigger (the shipped carousel, ITER iterations x 5 angles)
# is the first job; the clock runs from that trigger's task_runs.fired_at to
# the last posts.posted_at. Every setting is printed with the table.
#
# Environment knobs (defaults are what docs/PERFORMANCE.md reports):
#   BENCH_PIPE_ITER=200        carousel iterations, instant scenarios (x5 posts; select_top 1000 caps what one run may post)
#   BENCH_PIPE_SLOW_ITER=100   carousel iterations, 50 ms scenarios (x5 posts)
#   BENCH_PIPE_INSTANT_REPEATS=5  runs of each instant scenario; the table
#                              shows the median run and lists every run
#   BENCH_PIPE_DELAY_MS=50     fake LLM delay of the slow scenarios
#   BENCH_PIPE_REPLICAS="1 3"  replica counts per worker service
#   BENCH_PIPE_CONCURRENCY=4   worker.concurrency (the shipped default)
#   BENCH_PIPE_BATCH=16        worker.batch_size, instant scenarios (shipped default)
#   BENCH_PIPE_SLOW_BATCH=1    worker.batch_size, 50 ms scenarios: a generate.post
#                              job takes ~0.3 s, so one job per claim spreads
#                              them over every thread and replica
#   BENCH_PIPE_POST_FANOUT=8   post jobs per posting fire (every 100 ms)
#   BENCH_PIPE_POSTS_PER_JOB=100  posts_per_job of the posting task: one job
#                              posts until none is due (shipped default 1:
#                              one post per tick, the human pace)
#   BENCH_PIPE_SINK=discord    discord (fake_discord over HTTP) | file
#   BENCH_PIPE_SCENARIOS="instant slow"
#   BENCH_PIPE_PERF=0          1: perf record -a during each drain, top
#                              processes and symbols appended to the report
#   BENCH_PIPE_PGSS=0          1: load pg_stat_statements (cluster restarted
#                              once), top statements per scenario appended
#   BENCH_PIPE_TIMEOUT=600     seconds allowed per scenario
# Prints a markdown report and writes it to bench/results/pipeline.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_ROOT=$(cd "$here/.." && pwd)
BENCH_BUILD=$(cd "${1:?usage: pipeline.sh BUILD_DIR}" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"

ITER=${BENCH_PIPE_ITER:-200}
SLOW_ITER=${BENCH_PIPE_SLOW_ITER:-100}
INSTANT_REPEATS=${BENCH_PIPE_INSTANT_REPEATS:-5}
DELAY_MS=${BENCH_PIPE_DELAY_MS:-50}
REPLICAS=${BENCH_PIPE_REPLICAS:-"1 3"}
CONC=${BENCH_PIPE_CONCURRENCY:-4}
BATCH=${BENCH_PIPE_BATCH:-16}
SLOW_BATCH=${BENCH_PIPE_SLOW_BATCH:-1}
SINK=${BENCH_PIPE_SINK:-discord}
SCENARIOS=${BENCH_PIPE_SCENARIOS:-"instant slow"}
PERF=${BENCH_PIPE_PERF:-0}
PGSS=${BENCH_PIPE_PGSS:-0}
TIMEOUT=${BENCH_PIPE_TIMEOUT:-600}
# Pipeline pacing, chosen for throughput (stated in the report):
CHECK_INTERVAL=50ms      # scheduler.check_interval
POLL_FALLBACK=1s         # worker.poll_fallback
CURATE_EVERY=${BENCH_PIPE_CURATE_EVERY:-100ms}       # curation schedule (on_event off: its 3 s delay is fixed)
CURATE_BATCH=50          # curation.batch_size: posts per scoring call (max 50)
POST_EVERY=100ms         # posting schedule
POST_FANOUT=${BENCH_PIPE_POST_FANOUT:-8}     # post jobs per posting fire
POSTS_PER_JOB=${BENCH_PIPE_POSTS_PER_JOB:-100} # posts one posting job may publish

bench_setup pipeline
if [ "$PGSS" = 1 ]; then
    psql "$PG_BASE/postgres" -qAtX -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'" >/dev/null
    bash "$BENCH_ROOT/scripts/pg.sh" stop "$BT/pg"
    url=$(bash "$BENCH_ROOT/scripts/pg.sh" start "$BT/pg")
    PG_BASE=${url%/*}
fi
CAROUSEL="$BENCH_ROOT/config/narratives/generation_carousel.yaml"
raw="$BT/raw.txt"
: >"$raw"
perf_out="$BT/perf.txt"
: >"$perf_out"
started=$(date +%s)

# write_config FILE ITERATIONS BATCH
write_config() {
    cat >"$1" <<EOF
database: { url: "\${DATABASE_URL}" }
bus:
  publish: "tcp://127.0.0.1:\${PUB_PORT}"
  collect: "tcp://127.0.0.1:\${COLLECT_PORT}"
  control: "tcp://127.0.0.1:\${CONTROL_PORT}"
  connect: tcp://127.0.0.1
scheduler: { check_interval: $CHECK_INTERVAL, failover: 10s, max_consecutive_failures: 1000 }
worker: { concurrency: $CONC, lease: 60s, poll_fallback: $POLL_FALLBACK, batch_size: $3, max_attempts: 5 }
providers:
  llm:
    kind: openai
    base_url: "http://127.0.0.1:\${LLM_PORT}/v1"
    model: fake-model
    api_key_env: LLM_API_KEY
    timeout: 30s
    budget: { rpm: 0, rpd: 0, tpm: 0, tpd: 0 }
platforms:
  discord: { api_base: "http://127.0.0.1:\${DISCORD_PORT}/api/v10", token_env: DISCORD_TOKEN, channel_id: "998877665544332211" }
  file: { path: "\${SCN_DIR}/posts.log" }
tasks:
  generation:
    service: generator
    schedule: "once 2099-01-01T00:00:00Z"
    narrative: "$CAROUSEL"
    iterations: $2
    execution: { max_retries: 2, strategy: single_run }
  curation:
    service: curator
    schedule: "every $CURATE_EVERY"
    jitter_percent: 0
    execution: { strategy: drain_queue, max_retries: 3, continue_on_error: true }
    curation:
      mode: auto
      select_top: 1000
      min_score: 0
      max_chars: 2000
      batch_size: $CURATE_BATCH
      on_event: false
      near_duplicate: { days: 0, threshold: 0.8 }
  posting:
    service: poster
    schedule: "every $POST_EVERY"
    jitter_percent: 0
    fanout: $POST_FANOUT
    posts_per_job: $POSTS_PER_JOB
    platform: $SINK
    execution: { max_retries: 0 }
EOF
}

# run_scenario NAME DELAY_MS REPLICAS ITERATIONS BATCH
run_scenario() {
    local name=$1 delay=$2 reps=$3 iter=$4 batch=$5
    RUN_SEQ=$((${RUN_SEQ:-0} + 1)) # a directory per run: repeats keep their own records
    local dir="$BT/$name-r$reps-$RUN_SEQ"
    mkdir -p "$dir"
    SCN_DIR=$dir
    export SCN_DIR
    DATABASE_URL=$(fresh_db "pipe_${name}_r$reps")
    export DATABASE_URL
    export LLM_API_KEY="sk-bench-$RANDOM" DISCORD_TOKEN="bot-bench-$RANDOM"
    LLM_PORT=$(free_port); DISCORD_PORT=$(free_port)
    PUB_PORT=$(free_port); COLLECT_PORT=$(free_port); CONTROL_PORT=$(free_port)
    export LLM_PORT DISCORD_PORT PUB_PORT COLLECT_PORT CONTROL_PORT
    write_config "$dir/btl.yaml" "$iter" "$batch"
    "$BENCH_BUILD/btl" validate "$dir/btl.yaml" >/dev/null
    "$BENCH_BUILD/btl" migrate --config "$dir/btl.yaml" >/dev/null

    local llm_args=(--port "$LLM_PORT")
    [ "$delay" -gt 0 ] && llm_args+=(--delay-ms "$delay")
    bstart "$dir" fake_llm fake_llm "${llm_args[@]}"
    bstart "$dir" fake_discord fake_discord --port "$DISCORD_PORT" --record "$dir/discord.jsonl" \
        --token "$DISCORD_TOKEN"
    wait_until "fake_llm" 20 grep -q "^listening $LLM_PORT" "$dir/fake_llm.log"
    wait_until "fake_discord" 20 grep -q "^listening $DISCORD_PORT" "$dir/fake_discord.log"

    local ports=() procs=() genports=() s i p
    p=$(free_port); ports+=("$p")
    bstart "$dir" scheduler btl-scheduler --config "$dir/btl.yaml" --http "127.0.0.1:$p" --instance sched
    procs+=("scheduler=$(pid_of scheduler)")
    for s in generator curator poster; do
        for i in $(seq 1 "$reps"); do
            p=$(free_port); ports+=("$p")
            bstart "$dir" "$s-$i" "btl-$s" --config "$dir/btl.yaml" --http "127.0.0.1:$p" --instance "$s-$i"
            [ "$s" = generator ] && genports+=("$p")
            procs+=("$s=$(pid_of "$s-$i")")
        done
    done
    for p in "${ports[@]}"; do wait_until "ready :$p" 30 http_ready "$p"; done
    wait_until "tasks synced" 20 bash -c "[ \$(psql '$DATABASE_URL' -qAtX -c \"SELECT count(*) FROM tasks\") = 3 ]"
    procs+=("fake_llm=$(pid_of fake_llm)" "fake_discord=$(pid_of fake_discord)")

    local load_before
    load_before=$(load1)
    local pg
    for pg in $(postgres_pids); do procs+=("postgres=$pg"); done
    cpu_snapshot "$dir/cpu0" "${procs[@]}"
    if [ "$PGSS" = 1 ]; then
        sqlq "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
        sqlq "SELECT pg_stat_statements_reset()" >/dev/null
    fi
    local perf_pid=""
    if [ "$PERF" = 1 ]; then
        perf record -a -g -F 499 -o "$dir/perf.data" >/dev/null 2>&1 &
        perf_pid=$!
    fi
    local reply
    reply=$(nngcat --req --dial "tcp://127.0.0.1:$CONTROL_PORT" --data "trigger generation" --ascii --recv-timeout 5)
    local run
    run=$(sed -n 's/.*"run_id":\([0-9]*\).*/\1/p' <<<"$reply")
    [ -n "$run" ] || { echo "pipeline: trigger failed: $reply" >&2; exit 1; }
    blog "$name, $reps replica(s): generation run $run, $((iter * 5)) generate.post jobs"
    # Done: every generate.post job finished and no post is still on its way.
    local done_sql="SELECT (SELECT count(*) FROM jobs WHERE run_id = $run AND kind = 'generate.post'
        AND status IN ('done', 'dead')) = $((iter * 5)) AND NOT EXISTS (SELECT 1 FROM posts
        WHERE status IN ('pending', 'approved', 'posting'))"
    done_now() { [ "$(psql "$DATABASE_URL" -qAtX -c "$done_sql" 2>/dev/null)" = t ]; }
    # The clock comes from the rows' timestamps, not from this poll: it only
    # has to notice the end, and each psql costs both cores some CPU.
    WAIT_POLL=0.5 wait_until "$name r$reps drained" "$TIMEOUT" done_now || {
        echo "pipeline: $name with $reps replicas did not finish in ${TIMEOUT}s" >&2
        psql "$DATABASE_URL" -c "SELECT status, count(*) FROM posts GROUP BY 1" -c \
            "SELECT kind, status, count(*) FROM jobs GROUP BY 1, 2" >&2
        exit 1
    }
    cpu_snapshot "$dir/cpu1" "${procs[@]}"
    local load_after
    load_after=$(load1)
    if [ -n "$perf_pid" ]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        {
            echo "### perf, $name, $reps replica(s): CPU samples by process"
            echo '```'
            perf report -i "$dir/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null |
                grep -v -e '^#' -e '^$' | sed -n '1,15p' || true
            echo '```'
            echo "### perf, $name, $reps replica(s): top symbols"
            echo '```'
            perf report -i "$dir/perf.data" --no-children --sort comm,dso,sym --stdio -g none 2>/dev/null |
                grep -v -e '^#' -e '^$' | sed -n '1,30p' || true
            echo '```'
        } >>"$perf_out"
    fi

    if [ "$PGSS" = 1 ]; then
        {
            echo "### pg_stat_statements, $name, $reps replica(s): top statements by total time"
            echo
            echo "| total ms | % | calls | calls per post | mean ms | statement |"
            echo "|---|---|---|---|---|---|"
            psql "$DATABASE_URL" -qAtX -F'|' -c "
                WITH s AS (SELECT * FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())),
                     n AS (SELECT greatest(count(*), 1) AS posts FROM posts WHERE status = 'posted')
                SELECT round(total_exec_time::numeric, 0), round((100 * total_exec_time / sum(total_exec_time) OVER ())::numeric, 1),
                       calls, round(calls::numeric / n.posts, 2), round(mean_exec_time::numeric, 3),
                       left(regexp_replace(query, '\s+', ' ', 'g'), 110)
                FROM s, n ORDER BY total_exec_time DESC LIMIT 15" |
                awk -F'|' '{ printf "| %s | %s | %s | %s | %s | `%s` |\n", $1, $2, $3, $4, $5, $6 }'
            echo
        } >>"$perf_out"
    fi
    local stats
    stats=$(psql "$DATABASE_URL" -qAtX -F' ' -c "
        WITH r AS (SELECT fired_at AS t0 FROM task_runs WHERE run_id = $run)
        SELECT (SELECT count(*) FROM posts WHERE run_id = $run),
               (SELECT count(*) FROM posts WHERE run_id = $run AND status IN ('approved','posting','posted')),
               (SELECT count(*) FROM posts WHERE run_id = $run AND status = 'posted'),
               (SELECT count(*) FROM posts WHERE run_id = $run AND status IN ('failed','unknown','rejected')),
               (SELECT count(*) FROM jobs WHERE run_id = $run AND status = 'dead'),
               round(extract(epoch FROM (SELECT max(generated_at) FROM posts WHERE run_id = $run) - r.t0)::numeric, 3),
               round(extract(epoch FROM (SELECT max(curated_at) FROM posts WHERE run_id = $run) - r.t0)::numeric, 3),
               round(extract(epoch FROM (SELECT max(posted_at) FROM posts WHERE run_id = $run) - r.t0)::numeric, 3),
               round(extract(epoch FROM (SELECT min(posted_at) FROM posts WHERE run_id = $run) - r.t0)::numeric, 3),
               (SELECT count(*) FROM jobs WHERE task_id = 'posting'),
               (SELECT count(*) FROM task_runs WHERE task_id = 'curation')
        FROM r")
    local gen appr posted not_posted dead t_gen t_cur t_post t_first post_jobs cur_runs
    read -r gen appr posted not_posted dead t_gen t_cur t_post t_first post_jobs cur_runs <<<"$stats"
    local sent
    sent=$(wc -l <"$dir/discord.jsonl")
    [ "$SINK" = file ] && sent=$(wc -l <"$dir/posts.log" 2>/dev/null || echo 0)
    local rate
    rate=$(awk -v n="$posted" -v t="$t_post" 'BEGIN { printf "%.1f", (t > 0 ? n / t : 0) }')
    local gen_rate
    gen_rate=$(awk -v n="$gen" -v t="$t_gen" 'BEGIN { printf "%.1f", (t > 0 ? n / t : 0) }')
    local cpu
    cpu=$(cpu_delta "$dir/cpu0" "$dir/cpu1" | awk '{ printf "cpu_%s=%s ", $1, $2 }')
    local dups=0 audit=0
    for p in "${genports[@]}"; do
        dups=$((dups + $(metric_sum "$p" btl_posts_duplicates_total)))
        audit=$((audit + $(metric_sum "$p" btl_posts_audit_rejected_total)))
    done
    local llm_req
    llm_req=$(psql "$DATABASE_URL" -qAtX -c "SELECT coalesce(sum(requests), 0) FROM llm_usage WHERE window_kind = 'day'")
    local line="RESULT scenario=$name delay_ms=$delay replicas=$reps batch=$batch jobs=$((iter * 5)) generated=$gen duplicates=$dups audit_refused=$audit approved=$appr posted=$posted sent=$sent not_posted=$not_posted dead_jobs=$dead t_generated_s=$t_gen t_curated_s=$t_cur t_first_post_s=$t_first t_posted_s=$t_post posts_per_s=$rate generated_per_s=$gen_rate llm_requests=$llm_req posting_jobs=$post_jobs curation_runs=$cur_runs load_before=$load_before load_after=$load_after $cpu"
    echo "$line" | tee -a "$raw" >&2
    if [ "$sent" != "$posted" ]; then
        echo "pipeline: the sink received $sent posts but $posted are recorded posted" >&2
        exit 1
    fi
    local names=(scheduler)
    for s in generator curator poster; do for i in $(seq 1 "$reps"); do names+=("$s-$i"); done; done
    bstop "${names[@]}" fake_llm fake_discord
    psql "$PG_BASE/postgres" -qAtX -c "DROP DATABASE pipe_${name}_r$reps" >/dev/null
}

for scn in $SCENARIOS; do
    for r in $REPLICAS; do
        case $scn in
        instant) for _ in $(seq 1 "$INSTANT_REPEATS"); do run_scenario instant 0 "$r" "$ITER" "$BATCH"; done ;;
        slow) run_scenario slow "$DELAY_MS" "$r" "$SLOW_ITER" "$SLOW_BATCH" ;;
        *) echo "pipeline: unknown scenario $scn" >&2; exit 2 ;;
        esac
    done
done
elapsed=$(($(date +%s) - started))

# ---- report -------------------------------------------------------------------
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
# The run of a scenario with the median posts/s (the only one, for slow).
row_of() {
    { grep "scenario=$1 .* replicas=$2 " "$raw" || true; } |
        awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^posts_per_s=/) { split($i, a, "="); print a[2] "\t" $0 } }' |
        sort -n | awk -F'\t' '{ l[NR] = $2 } END { if (NR) print l[int((NR + 1) / 2)] }'
}
runs_of() { { grep "scenario=$1 .* replicas=$2 " "$raw" || true; } | sed -n 's/.* posts_per_s=\([^ ]*\).*/\1/p' | paste -sd' '; }
pgver=$(psql "$PG_BASE/postgres" -qAtX -c "SHOW server_version")
report() {
    echo "# Pipeline benchmark results"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), run time ${elapsed}s"
    echo "- machine: $(machine_line)"
    echo "- PostgreSQL $pgver, private cluster of scripts/pg.sh (fsync=off, synchronous_commit=on), same machine"
    echo "- load average (1 min) before/after each scenario in the table; other work on the machine is not stopped"
    echo
    echo "Instant scenarios: $INSTANT_REPEATS runs each, each on a fresh database with fresh processes; the row"
    echo "is the median run (by posts/s) and the last column lists every run. Slow scenarios: one run."
    echo
    echo "| scenario | LLM delay | replicas per worker service | generate.post jobs | posts generated | posted | end-to-end posts/s | generated/s | last generated | last posted | load 1m before → after | every run, posts/s |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    local l scn r
    for scn in $SCENARIOS; do
        for r in $REPLICAS; do
            l=$(row_of "$scn" "$r")
            [ -n "$l" ] || continue
            echo "| $scn | $(field delay_ms "$l") ms | $r | $(field jobs "$l") | $(field generated "$l") | $(field posted "$l") | **$(field posts_per_s "$l")** | $(field generated_per_s "$l") | $(field t_generated_s "$l") s | $(field t_posted_s "$l") s | $(field load_before "$l") → $(field load_after "$l") | $(runs_of "$scn" "$r") |"
        done
    done
    echo
    echo "Scaling (3 replicas ÷ 1 replica, end-to-end posts/s of the rows above):"
    for scn in $SCENARIOS; do
        local a b
        a=$(field posts_per_s "$(row_of "$scn" 1)")
        b=$(field posts_per_s "$(row_of "$scn" 3)")
        [ -n "$a" ] && [ -n "$b" ] && awk -v s="$scn" -v a="$a" -v b="$b" 'BEGIN { printf "- %s: %s → %s posts/s = %.2f×\n", s, a, b, (a > 0 ? b / a : 0) }'
    done
    echo
    echo "CPU seconds used during the drain of the run in the table, by process group (2 cores = 2 CPU-s per second):"
    echo
    echo "| scenario | replicas | wall s | postgres | generator | curator | poster | scheduler | fake_llm | fake_discord | total | CPU busy |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    for scn in $SCENARIOS; do
        for r in $REPLICAS; do
            l=$(row_of "$scn" "$r")
            [ -n "$l" ] || continue
            local t pgc gc cc pc sc fl fd tot
            t=$(field t_posted_s "$l")
            pgc=$(field cpu_postgres "$l"); gc=$(field cpu_generator "$l"); cc=$(field cpu_curator "$l")
            pc=$(field cpu_poster "$l"); sc=$(field cpu_scheduler "$l"); fl=$(field cpu_fake_llm "$l")
            fd=$(field cpu_fake_discord "$l")
            tot=$(awk -v a="$pgc" -v b="$gc" -v c="$cc" -v d="$pc" -v e="$sc" -v f="$fl" -v g="$fd" 'BEGIN { printf "%.1f", a+b+c+d+e+f+g }')
            echo "| $scn | $r | $t | $pgc | $gc | $cc | $pc | $sc | $fl | $fd | $tot | $(awk -v a="$tot" -v t="$t" 'BEGIN { printf "%.0f %%", (t > 0 ? 100 * a / (2 * t) : 0) }') |"
        done
    done
    echo
    echo "Settings: one generation trigger of config/narratives/generation_carousel.yaml (5 narratives × 5 acts:"
    echo "generate, critique, refine, format_json, audit_json; iterations $ITER instant / $SLOW_ITER slow),"
    echo "fake_llm (OpenAI-compatible, offline provider's deterministic replies, usage counts) with"
    echo "--delay-ms 0 / $DELAY_MS; LLM budget unlimited (rpm/rpd/tpm/tpd 0; requests and tokens still"
    echo "recorded in llm_usage); sink: $SINK$([ "$SINK" = discord ] && echo " (fake_discord over HTTP, nonce + enforce_nonce, one request per post)");"
    echo "worker.concurrency $CONC, worker.batch_size $BATCH instant / $SLOW_BATCH slow, poll_fallback $POLL_FALLBACK, lease 60s;"
    echo "scheduler.check_interval $CHECK_INTERVAL; curation every $CURATE_EVERY (drain_queue, batch_size $CURATE_BATCH,"
    echo "select_top 1000, min_score 0, near_duplicate off, on_event off); posting every $POST_EVERY, jitter 0,"
    echo "no window, fanout $POST_FANOUT, posts_per_job $POSTS_PER_JOB (at most $((POST_FANOUT * POSTS_PER_JOB)) posts per fire). Clock: trigger's"
    echo "task_runs.fired_at → last posts.posted_at. Each scenario: fresh database, fresh processes, BTL_LOG=warn."
    echo
    echo "## Raw results"
    echo
    echo '```'
    cat "$raw"
    echo '```'
    if [ -s "$perf_out" ]; then
        echo
        echo "## Profiles"
        echo
        cat "$perf_out"
    fi
}
mkdir -p "$here/results"
report | tee "$here/results/pipeline.md"
