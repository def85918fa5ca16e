#!/usr/bin/env bash
# Queue benchmark: Botticelli's job queue next to pg-boss and graphile-worker
# on the same private PostgreSQL cluster, a fresh database per run, with
# pgbench on the same cluster as the ceiling (one job per transaction).
#
#   bash bench/queue/run.sh BUILD_DIR      (`make bench` passes ./build, a Release build)
#
# Environment knobs (defaults are what docs/PERFORMANCE.md reports):
#   BENCH_JOBS=20000        jobs per throughput run (botticelli, graphile-worker,
#                           pgbench; pg-boss: see BENCH_PGBOSS_ROUNDS)
#   BENCH_REPEATS=3         throughput runs per setting (median reported);
#                           pg-boss runs once (its rate is set by its poll timer)
#   BENCH_BATCHES="1 10 100"  claim batch sizes (ours and pg-boss batchSize)
#   BENCH_PGBOSS_ROUNDS=20  pg-boss jobs per run = min(BENCH_JOBS, batch x workers
#                           x rounds): a loop fetches at most one batch per 0.5 s
#                           poll, so 20 rounds keep every pg-boss run near 10 s
#   BENCH_SAMPLES=2000      pickup-latency samples (botticelli, graphile-worker)
#   BENCH_PGBOSS_SAMPLES=200  pg-boss latency samples (each waits for a poll)
#   BENCH_LAT_RUNS=3        latency runs (botticelli, graphile-worker), each reported
#   BENCH_PEERS=1           0 = skip the npm peers
#   BENCH_PGBENCH=1         0 = skip the pgbench ceiling
# Prints a markdown report and writes it to bench/queue/results/latest.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:?usage: run.sh BUILD_DIR}
build=$(cd "$build" && pwd)

JOBS=${BENCH_JOBS:-20000}
REPEATS=${BENCH_REPEATS:-3}
SAMPLES=${BENCH_SAMPLES:-2000}
PGBOSS_SAMPLES=${BENCH_PGBOSS_SAMPLES:-200}
LAT_RUNS=${BENCH_LAT_RUNS:-3}
PEERS=${BENCH_PEERS:-1}
PGBENCH=${BENCH_PGBENCH:-1}
BATCHES=${BENCH_BATCHES:-"1 10 100"}
PGBOSS_ROUNDS=${BENCH_PGBOSS_ROUNDS:-20}
WORKERS="1 2 4"
BATCH_DEFAULT=16   # worker.batch_size default, reported as an extra row
PGBOSS_BEST=1000   # pg-boss batchSize that gave its best rate, an extra row
GAP_MS=5           # random 0..GAP_MS ms between latency samples
PGBOSS_GAP_MS=500  # one poll period: arrivals land at a random point of it

lib="$build/libbtl_shared.a"
[ -f "$lib" ] || { echo "run.sh: $lib missing; build first (make build)" >&2; exit 1; }

# ---- build the C bench against the static library ------------------------
bin="$build/btl_queue_bench"
pkgs="msgpack libpq libcurl yaml-0.1 libmicrohttpd jansson libjwt"
# shellcheck disable=SC2046
cc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -I "$root/libshared/include" \
    $(pkg-config --cflags $pkgs) "$here/btl_queue_bench.c" "$lib" \
    $(pkg-config --libs $pkgs) -lnng -lpthread -lm -o "$bin"

# ---- peers' node modules -------------------------------------------------
if [ "$PEERS" = 1 ] && [ ! -d "$here/node_modules/pg-boss" ]; then
    command -v npm >/dev/null || { echo "run.sh: npm not found (or set BENCH_PEERS=0)" >&2; exit 1; }
    (cd "$here" && npm ci --no-audit --no-fund >/dev/null)
fi

# ---- private cluster -------------------------------------------------------
pgdir=$(mktemp -d /tmp/btl-bench.XXXXXX)
chmod 755 "$pgdir"
cleanup() {
    bash "$root/scripts/pg.sh" stop "$pgdir" || true
    rm -rf "$pgdir"
}
trap cleanup EXIT
url=$(bash "$root/scripts/pg.sh" start "$pgdir")
base=${url%/*}

fresh_db() { # prints the URL of a new, empty database (runs in a subshell: no counters)
    local name="bench_$(date +%s%N)"
    psql "$base/postgres" -qAtX -c "CREATE DATABASE $name" >/dev/null
    echo "$base/$name"
}
drop_db() { psql "$base/postgres" -qAtX -c "DROP DATABASE IF EXISTS ${1##*/}" >/dev/null; }

raw="$pgdir/raw.txt"
: >"$raw"
run_one() { # run_one CMD... : on a fresh DB (URL substituted for @URL@)
    local db line args=()
    db=$(fresh_db)
    for a in "$@"; do args+=("${a//@URL@/$db}"); done
    line=$("${args[@]}" | grep '^RESULT ' | tail -1) || {
        echo "run.sh: failed: ${args[*]}" >&2
        exit 1
    }
    echo "$line" | tee -a "$raw" >&2
    drop_db "$db"
}

field() { # field KEY LINE...: value of key=value
    local k=$1
    shift
    sed -n "s/.* $k=\([^ ]*\).*/\1/p" <<<"$*"
}

median_of() { # stdin numbers → median
    sort -g | awk '{a[NR]=$1} END {if (NR==0) print "n/a"; else if (NR%2) print a[(NR+1)/2]; else printf "%.0f\n", (a[NR/2]+a[NR/2+1])/2}'
}

tp_median() { # tp_median IMPL WORKERS BATCH [TEXT]: median jobs/s, "n/a" if none
    awk -v impl="impl=$1 " -v wb=" workers=$2 batch=$3 " -v extra="${4:-}" '
        index($0, impl) && index($0, "mode=throughput") && index($0, wb) && index($0, extra) {
            for (i = 1; i <= NF; i++) if ($i ~ /^jobs_per_s=/) print substr($i, 12)
        }' "$raw" | median_of
}

mig="$root/migrations"
started=$(date +%s)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== botticelli throughput (N=$JOBS, repeats $REPEATS)" >&2
for w in $WORKERS; do
    for b in $BATCHES $BATCH_DEFAULT; do
        for _ in $(seq "$REPEATS"); do
            run_one "$bin" throughput --url @URL@ --migrations "$mig" --jobs "$JOBS" --workers "$w" --batch "$b"
        done
    done
done
echo "== botticelli pickup latency" >&2
for _ in $(seq "$LAT_RUNS"); do
    run_one "$bin" latency --url @URL@ --migrations "$mig" --samples "$SAMPLES" --gap-ms $GAP_MS
done

if [ "$PEERS" = 1 ]; then
    echo "== graphile-worker" >&2
    for w in $WORKERS; do
        for _ in $(seq "$REPEATS"); do
            run_one node "$here/graphile.mjs" throughput @URL@ "$JOBS" "$w"
        done
    done
    for _ in $(seq "$LAT_RUNS"); do
        run_one node "$here/graphile.mjs" latency @URL@ "$SAMPLES" $GAP_MS
    done
    echo "== pg-boss" >&2
    for w in $WORKERS; do
        for b in $BATCHES $PGBOSS_BEST; do
            n=$((b * w * PGBOSS_ROUNDS))
            [ "$n" -le "$JOBS" ] || n=$JOBS
            run_one node "$here/pgboss.mjs" throughput @URL@ "$n" "$w" "$b"
        done
    done
    run_one node "$here/pgboss.mjs" latency @URL@ "$PGBOSS_SAMPLES" $PGBOSS_GAP_MS
fi

# ---- pgbench ceiling: the same schema, N queued jobs, one job per transaction
pgbench_one() { # pgbench_one SCRIPT CLIENTS [PROTOCOL]
    local db script=$1 c=$2 proto=${3:-prepared} out tps left
    db=$(fresh_db)
    for f in "$mig"/*.up.sql; do psql "$db" -qAtX -v ON_ERROR_STOP=1 -f "$f" >/dev/null; done
    psql "$db" -qAtX -v ON_ERROR_STOP=1 -c "INSERT INTO jobs (queue, kind, task_id, payload)
        SELECT 'generator', 'op', 'bench', '{\"op\":\"noop\"}' FROM generate_series(1, $JOBS)" \
        -c "VACUUM ANALYZE jobs" >/dev/null
    out=$(pgbench -n -M "$proto" -c "$c" -j "$c" -t $((JOBS / c)) -f "$here/$script" "$db" 2>&1) || {
        echo "run.sh: pgbench failed: $out" >&2
        exit 1
    }
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' <<<"$out")
    left=$(psql "$db" -qAtX -c "SELECT count(*) FILTER (WHERE status <> 'done') FROM jobs")
    [ "$left" = "$((JOBS - JOBS / c * c))" ] || { echo "run.sh: pgbench left $left jobs not done" >&2; exit 1; }
    echo "RESULT impl=pgbench mode=throughput script=${script%.sql} protocol=$proto jobs=$((JOBS / c * c)) workers=$c batch=1 jobs_per_s=${tps%.*}" |
        tee -a "$raw" >&2
    drop_db "$db"
}
if [ "$PGBENCH" = 1 ]; then
    command -v pgbench >/dev/null || { echo "run.sh: pgbench not found (or set BENCH_PGBENCH=0)" >&2; exit 1; }
    echo "== pgbench ceiling" >&2
    for w in $WORKERS; do
        for _ in $(seq "$REPEATS"); do
            pgbench_one pgbench_claim1.sql "$w"
            pgbench_one pgbench_claim2.sql "$w"
            # As libpq's PQexecParams (db.c): parse and plan on every execution.
            pgbench_one pgbench_claim2.sql "$w" extended
        done
    done
fi
elapsed=$(($(date +%s) - started))
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- report ------------------------------------------------------------------
pgver=$(psql "$base/postgres" -qAtX -c "SHOW server_version")
pgset=$(psql "$base/postgres" -qAtX -F= -c "SELECT name, setting FROM pg_settings WHERE name IN
    ('fsync','synchronous_commit','shared_buffers','max_connections','wal_level') ORDER BY name" | tr '\n' ' ')
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0 && a + 0 > 0) printf (a / b >= 100 ? "%.0f×" : a / b >= 10 ? "%.1f×" : "%.2f×"), a / b; else print "n/a" }'; }
lat() { grep "impl=$1 mode=latency" "$raw" || true; }

report() {
    echo "# Queue benchmark results"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), run time ${elapsed}s"
    echo "- machine: $(nproc) CPUs, ${cpu:-unknown CPU}, $(uname -sr)"
    echo "- PostgreSQL $pgver (private cluster of scripts/pg.sh, same machine, TCP 127.0.0.1): $pgset"
    echo "- node $(node --version 2>/dev/null || echo n/a); peers: pg-boss 10.4.2, graphile-worker 0.16.6"
    echo "- jobs per throughput run: $JOBS noop jobs, all enqueued before the drain, then VACUUM ANALYZE;"
    echo "  median of $REPEATS runs (pg-boss: 1 run); a fresh database per run"
    echo
    echo "- load average (1/5/15 min) at start: $load_start; at end: $load_end"
    # Deadlocks are retried by the claim, so only the server log shows them.
    echo "- deadlocks Postgres detected during the run: $(grep -c 'deadlock detected' "$pgdir/postgres.log" || true)"
    echo
    echo "## Throughput (jobs/s, first pickup → last job marked done)"
    echo
    echo "Same claim batch size B for botticelli (claim limit) and pg-boss (batchSize);"
    echo "graphile-worker 0.16 has no batch setting (one job per fetch and per complete),"
    echo "so its one figure per worker count stands in every B row."
    echo
    echo "| workers | B | botticelli | pg-boss B | graphile-worker | botticelli ÷ pg-boss | botticelli ÷ graphile |"
    echo "|---|---|---|---|---|---|---|"
    local w b bt p g
    for w in $WORKERS; do
        for b in $BATCHES; do
            bt=$(tp_median botticelli "$w" "$b")
            p=$(tp_median pg-boss "$w" "$b")
            g=$(tp_median graphile-worker "$w" 1)
            echo "| $w | $b | $bt | $p | $g | $(ratio "$bt" "$p") | $(ratio "$bt" "$g") |"
        done
    done
    echo
    echo "Extra settings: the shipped default worker.batch_size ($BATCH_DEFAULT) and pg-boss's best batchSize ($PGBOSS_BEST):"
    echo
    echo "| workers | botticelli B=$BATCH_DEFAULT | botticelli B=100 | pg-boss B=$PGBOSS_BEST | B=$BATCH_DEFAULT ÷ pg-boss B=$PGBOSS_BEST | B=100 ÷ pg-boss B=$PGBOSS_BEST | B=$BATCH_DEFAULT ÷ graphile |"
    echo "|---|---|---|---|---|---|---|"
    local d h pb
    for w in $WORKERS; do
        d=$(tp_median botticelli "$w" $BATCH_DEFAULT)
        h=$(tp_median botticelli "$w" 100)
        pb=$(tp_median pg-boss "$w" $PGBOSS_BEST)
        g=$(tp_median graphile-worker "$w" 1)
        echo "| $w | $d | $h | $pb | $(ratio "$d" "$pb") | $(ratio "$h" "$pb") | $(ratio "$d" "$g") |"
    done
    echo
    echo "Settings: botticelli = W threads, one connection each, as worker.c's drain loop: a first"
    echo "btl_jobs_claim(limit B, lease 60 s), then btl_jobs_complete_claim (the batch marked done and the"
    echo "next B claimed in ONE statement) until the queue is empty, noop handler; N=$JOBS. graphile-worker = one runner,"
    echo "concurrency W, pollInterval 2000 ms, one job per fetch/complete (0.16 has no batching); N=$JOBS."
    echo "pg-boss = W work() loops in one process, batchSize B, pollingIntervalSeconds 0.5 (its minimum;"
    echo "a loop waits for the interval after every fetch, even a full one), pool max 10;"
    echo "N = min($JOBS, B × W × $PGBOSS_ROUNDS) so each run is about $PGBOSS_ROUNDS fetch rounds (the clock"
    echo "starts at the first pickup, so one of the rounds' poll waits is not timed: pg-boss's rate is"
    echo "flattered by up to $PGBOSS_ROUNDS/$((PGBOSS_ROUNDS - 1)))."
    echo
    if [ "$PGBENCH" = 1 ]; then
        echo "## Ceiling: pgbench on the same cluster (one job per transaction)"
        echo
        echo "pgbench -n -M prepared -c W -j W -t N/W over N=$JOBS queued jobs in our jobs table (the shipped"
        echo "migrations, jobs_claim_order_idx). claim1 = bench/queue/pgbench_claim1.sql: ONE statement per"
        echo "job, UPDATE ... SET status = 'done' WHERE id = (SELECT id ... ORDER BY priority DESC,"
        echo "run_after, id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id. claim2 = pgbench_claim2.sql:"
        echo "a claim with lease (... RETURNING) then its completion as two statements at B=1 (our drain"
        echo "loop's shape before both went into one statement), with prepared statements (-M prepared) and"
        echo "re-parsed and re-planned on every execution (-M extended, what libpq's PQexecParams does: how"
        echo "our db layer runs a text the first time it sees it). Median of $REPEATS."
        echo
        echo "| clients = workers | pgbench claim1 | pgbench claim2 prepared | pgbench claim2 extended | botticelli B=1 | B=1 ÷ claim2 extended | B=1 ÷ claim2 prepared | B=1 ÷ claim1 | botticelli B=10 ÷ claim1 | botticelli B=100 ÷ claim1 |"
        echo "|---|---|---|---|---|---|---|---|---|---|"
        local c1 c2 c2e b1 b10 b100
        for w in $WORKERS; do
            c1=$(tp_median pgbench "$w" 1 "script=pgbench_claim1 protocol=prepared ")
            c2=$(tp_median pgbench "$w" 1 "script=pgbench_claim2 protocol=prepared ")
            c2e=$(tp_median pgbench "$w" 1 "script=pgbench_claim2 protocol=extended ")
            b1=$(tp_median botticelli "$w" 1)
            b10=$(tp_median botticelli "$w" 10)
            b100=$(tp_median botticelli "$w" 100)
            echo "| $w | $c1 | $c2 | $c2e | $b1 | $(ratio "$b1" "$c2e") | $(ratio "$b1" "$c2") | $(ratio "$b1" "$c1") | $(ratio "$b10" "$c1") | $(ratio "$b100" "$c1") |"
        done
        echo
    fi
    echo "## Pickup latency (ms, 1 worker idle on an empty queue, one job at a time)"
    echo
    echo "| system | wake-up | samples | gap | p50 | p90 | p99 | max |"
    echo "|---|---|---|---|---|---|---|---|"
    local l
    for impl in botticelli graphile-worker pg-boss; do
        while read -r l; do
            [ -n "$l" ] || continue
            echo "| $impl | $(field wake "$l") | $(field samples "$l") | $(field gap_ms "$l") ms | $(field p50_ms "$l") | $(field p90_ms "$l") | $(field p99_ms "$l") | $(field max_ms "$l") |"
        done <<<"$(lat $impl)"
    done
    echo
    echo "Measured from just before the enqueue call to the pickup (botticelli: claim statement"
    echo "returned; peers: handler start). botticelli's enqueue is BEGIN + INSERT + COMMIT like a"
    echo "scheduler fire, then a msgpack tick.generator over nng PUB/SUB (TCP loopback), decoded by a"
    echo "receiver thread that wakes the worker thread's condvar; the worker claims (batch 16)."
    echo "botticelli tick → pickup alone (COMMIT returned → claim returned, includes publish), per run:"
    while read -r l; do
        [ -n "$l" ] || continue
        echo "- p50 $(field commit_to_claim_p50_ms "$l") ms, p99 $(field commit_to_claim_p99_ms "$l") ms"
    done <<<"$(lat botticelli)"
    echo
    echo "## Raw results"
    echo
    echo '```'
    cat "$raw"
    echo '```'
}

mkdir -p "$here/results"
report | tee "$here/results/latest.md"
