#!/usr/bin/env bash
# Queue benchmark: Botticelli's job queue next to pg-boss and graphile-worker
# on the same private PostgreSQL cluster, a fresh database per run.
#
#   bash bench/queue/run.sh BUILD_DIR      (`make bench` passes ./build, a Release build)
#
# Environment knobs (defaults are what docs/PERFORMANCE.md reports):
#   BENCH_JOBS=20000        jobs per throughput run (same N for everyone)
#   BENCH_REPEATS=3         throughput runs per setting (median reported);
#                           pg-boss runs once (its rate is set by its poll timer)
#   BENCH_SAMPLES=2000      pickup-latency samples (botticelli, graphile-worker)
#   BENCH_PGBOSS_SAMPLES=200  pg-boss latency samples (each waits for a poll)
#   BENCH_LAT_RUNS=3        latency runs (botticelli, graphile-worker), each reported
#   BENCH_PEERS=1           0 = skip the npm peers
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
WORKERS="1 2 4"
BATCH=100          # our claim limit, and pg-boss batchSize, in the main table
BATCH_DEFAULT=16   # worker.batch_size default, reported as a second row
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

tp_median() { # tp_median IMPL WORKERS BATCH: median jobs/s, "n/a" if none
    awk -v impl="impl=$1 " -v wb=" workers=$2 batch=$3 " '
        index($0, impl) && index($0, "mode=throughput") && index($0, wb) {
            for (i = 1; i <= NF; i++) if ($i ~ /^jobs_per_s=/) print substr($i, 12)
        }' "$raw" | median_of
}

mig="$root/migrations"
started=$(date +%s)
echo "== botticelli throughput (N=$JOBS, repeats $REPEATS)" >&2
for w in $WORKERS; do
    for b in $BATCH $BATCH_DEFAULT; do
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
        run_one node "$here/pgboss.mjs" throughput @URL@ "$JOBS" "$w" $BATCH
        run_one node "$here/pgboss.mjs" throughput @URL@ "$JOBS" "$w" 1000
    done
    run_one node "$here/pgboss.mjs" latency @URL@ "$PGBOSS_SAMPLES" $PGBOSS_GAP_MS
fi
elapsed=$(($(date +%s) - started))

# ---- report ------------------------------------------------------------------
pgver=$(psql "$base/postgres" -qAtX -c "SHOW server_version")
pgset=$(psql "$base/postgres" -qAtX -F= -c "SELECT name, setting FROM pg_settings WHERE name IN
    ('fsync','synchronous_commit','shared_buffers','max_connections','wal_level') ORDER BY name" | tr '\n' ' ')
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0 && a + 0 > 0) printf "%.1f×", a / b; else print "n/a" }'; }
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
    echo "## Throughput (jobs/s, first pickup → last job marked done)"
    echo
    echo "| workers | botticelli B=$BATCH | botticelli B=$BATCH_DEFAULT | graphile-worker (1 job/fetch) | pg-boss B=$BATCH | pg-boss B=1000 | botticelli ÷ graphile | botticelli ÷ pg-boss B=$BATCH | botticelli ÷ pg-boss B=1000 | B=$BATCH_DEFAULT ÷ graphile | B=$BATCH_DEFAULT ÷ pg-boss B=1000 |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    for w in $WORKERS; do
        local b1 b2 g p1 p2
        b1=$(tp_median botticelli "$w" $BATCH)
        b2=$(tp_median botticelli "$w" $BATCH_DEFAULT)
        g=$(tp_median graphile-worker "$w" 1)
        p1=$(tp_median pg-boss "$w" $BATCH)
        p2=$(tp_median pg-boss "$w" 1000)
        echo "| $w | $b1 | $b2 | $g | $p1 | $p2 | $(ratio "$b1" "$g") | $(ratio "$b1" "$p1") | $(ratio "$b1" "$p2") | $(ratio "$b2" "$g") | $(ratio "$b2" "$p2") |"
    done
    echo
    echo "Settings: botticelli = W threads, one connection each, btl_jobs_claim(limit B, lease 60 s) +"
    echo "btl_jobs_complete (one statement per batch), noop handler. graphile-worker = one runner,"
    echo "concurrency W, pollInterval 2000 ms, one job per fetch/complete (0.16 has no batching)."
    echo "pg-boss = W work() loops in one process, batchSize B, pollingIntervalSeconds 0.5 (its minimum;"
    echo "a loop waits for the interval after every fetch, even a full one), pool max 10."
    echo
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
