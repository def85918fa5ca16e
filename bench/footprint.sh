#!/usr/bin/env bash
# Footprint of each service (issue 5): start-to-ready time, idle RSS and RSS
# while draining a burst of noop jobs. A benchmark, not a test: `make test`
# does not run it. Prints a markdown table (docs/PERFORMANCE.md "Footprint").
#
#   bench/footprint.sh BUILD_DIR      a Release build (`make build` -> build)
#
# Knobs: FOOT_RUNS (5) start-to-ready repeats, FOOT_FANOUT (10000) fanout of
# each noop task, FOOT_TRIGGERS (2) triggers of each, FOOT_IDLE_S (5) seconds
# before the idle sample. 10000 is the most one fire may enqueue
# (BTL_JOBS_BATCH_MAX); two triggers make the 20,000 jobs per worker.
set -euo pipefail
BUILD=$(cd "${1:?usage: bench/footprint.sh BUILD_DIR}" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${FOOT_RUNS:-5}
FANOUT=${FOOT_FANOUT:-10000}
TRIGGERS=${FOOT_TRIGGERS:-2}
JOBS=$((FANOUT * TRIGGERS))
IDLE_S=${FOOT_IDLE_S:-5}
SERVICES=(scheduler generator curator poster)
# The private cluster, free ports and the scratch dir (kept with FOOT_KEEP=1)
# come from bench/lib.sh.
BENCH_ROOT=$ROOT BENCH_BUILD=$BUILD BENCH_KEEP=${FOOT_KEEP:-}
BTL_LOG=${BTL_LOG:-warn}
# shellcheck source=../bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_setup_tracked footprint
T=$BT
ms_now() { local t=${EPOCHREALTIME/[.,]/}; echo $((t / 1000)); }
us_now() { local t=${EPOCHREALTIME/[.,]/}; echo $((t)); }
PUB_PORT=$(free_port); COLLECT_PORT=$(free_port); CONTROL_PORT=$(free_port)
declare -A HTTP=()
for s in "${SERVICES[@]}"; do HTTP[$s]=$(free_port); done
export PUB_PORT COLLECT_PORT CONTROL_PORT T
CONTROL_URL="tcp://127.0.0.1:$CONTROL_PORT"

# Offline everything: file sink, noop jobs; the shipped worker defaults.
cat >"$T/btl.yaml" <<EOF
database: { url: "\${DATABASE_URL}" }
bus:
  publish: "tcp://127.0.0.1:\${PUB_PORT}"
  collect: "tcp://127.0.0.1:\${COLLECT_PORT}"
  control: "tcp://127.0.0.1:\${CONTROL_PORT}"
  connect: tcp://127.0.0.1
scheduler: { check_interval: 1s, failover: 10s }
worker: { concurrency: 4, lease: 60s, poll_fallback: 5s, batch_size: 16 }
providers:
  llm: { kind: offline, model: offline }
platforms:
  file: { path: "\${T}/posts.log" }
tasks:
  noop_generator: { service: generator, schedule: "once 2099-01-01T00:00:00Z", job: noop, fanout: $FANOUT }
  noop_curator:   { service: curator,   schedule: "once 2099-01-01T00:00:00Z", job: noop, fanout: $FANOUT }
  noop_poster:    { service: poster,    schedule: "once 2099-01-01T00:00:00Z", job: noop, fanout: $FANOUT, platform: file }
EOF
"$BUILD/btl" validate "$T/btl.yaml" >/dev/null
"$BUILD/btl" migrate --config "$T/btl.yaml" >/dev/null

sql() { psql "$DATABASE_URL" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }

# A fifo nobody writes: `read -t` on it is a 2 ms sleep without a fork.
mkfifo "$T/tick"
exec 9<>"$T/tick"

# ready_200 PORT: one GET /health/ready over bash's /dev/tcp (no curl fork,
# so the 2 ms poll is not dominated by process creation).
ready_200() {
    local line
    { exec 8<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
    printf 'GET /health/ready HTTP/1.0\r\nHost: x\r\n\r\n' >&8 2>/dev/null || { exec 8<&-; return 1; }
    IFS= read -r -t 1 line <&8 || line=
    exec 8<&-
    [[ $line == "HTTP/1."?" 200"* ]]
}

launch() {
    local s=$1
    "$BUILD/btl-$s" --config "$T/btl.yaml" --http "127.0.0.1:${HTTP[$s]}" --instance "$s-foot" \
        >>"$T/$s.log" 2>&1 &
    PID[$s]=$!
}

# start_ready S: exec S, poll every 2 ms; sets RMS to the ms from exec to the
# first 200 (a global, not $(...): the service must be this shell's child).
start_ready() {
    local s=$1 t0 deadline
    t0=$(us_now)
    launch "$s"
    deadline=$((t0 + 30000000))
    until ready_200 "${HTTP[$s]}"; do
        kill -0 "${PID[$s]}" 2>/dev/null || { echo "footprint: $s died" >&2; return 1; }
        (($(us_now) < deadline)) || { echo "footprint: $s not ready in 30 s" >&2; return 1; }
        read -r -t 0.002 -u 9 _ || true
    done
    RMS=$((($(us_now) - t0 + 500) / 1000))
}

stop() {
    local s=$1
    kill -TERM "${PID[$s]}" 2>/dev/null || true
    wait "${PID[$s]}" 2>/dev/null || true
    unset "PID[$s]"
}

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
kib() { awk '$1 == "'"$1"':" {print $2}' "/proc/$2/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

declare -A PSS=() READY=() READY_ALL=() IDLE=() IDLE_ANON=() IDLE_FILE=() VSZ=() THR=() PEAK=() HWM=()

# Start-to-ready. The scheduler alone (one warm-up run first: the first
# start applies the migrations); workers with the scheduler already running,
# because a worker is ready only once it reaches the bus.
for s in "${SERVICES[@]}"; do
    if [ "$s" = generator ]; then start_ready scheduler; fi
    if [ "$s" = scheduler ]; then start_ready scheduler; stop scheduler; fi
    v=()
    for _ in $(seq 1 "$RUNS"); do
        start_ready "$s"
        v+=("$RMS")
        stop "$s"
    done
    READY[$s]=$(median "${v[@]}")
    READY_ALL[$s]="${v[*]}"
done
stop scheduler

# Idle: the whole stack up and ready, IDLE_S seconds later.
for s in "${SERVICES[@]}"; do start_ready "$s"; done
read -r -t "$IDLE_S" -u 9 _ || true
for s in "${SERVICES[@]}"; do
    p=${PID[$s]}
    IDLE[$s]=$(kib VmRSS "$p"); IDLE_ANON[$s]=$(kib RssAnon "$p"); IDLE_FILE[$s]=$(kib RssFile "$p")
    VSZ[$s]=$(kib VmSize "$p"); THR[$s]=$(kib Threads "$p")
    # PSS splits shared library pages among the processes mapping them.
    PSS[$s]=$(awk '$1 == "Pss:" {print $2}' "/proc/$p/smaps_rollup")
    PEAK[$s]=${IDLE[$s]}
done

# Loaded: JOBS noop jobs for each worker at once; sample VmRSS every 20 ms
# until every run has its executions rows, VmHWM at the end.
runs=()
t0=$(ms_now)
for _ in $(seq 1 "$TRIGGERS"); do for s in generator curator poster; do
    reply=$(nngcat --req --dial "$CONTROL_URL" --data "trigger noop_$s" --ascii --recv-timeout 5)
    id=$(sed -n 's/.*"run_id":\([0-9]*\).*/\1/p' <<<"$reply")
    [ -n "$id" ] || { echo "footprint: trigger noop_$s: $reply" >&2; exit 1; }
    runs+=("$id")
done; done
ids=$(IFS=,; echo "${runs[*]}")
deadline=$(($(ms_now) + 600000))
n=0
while :; do
    n=$((n + 1))
    for s in "${SERVICES[@]}"; do
        r=$(kib VmRSS "${PID[$s]}")
        ((r > PEAK[$s])) && PEAK[$s]=$r
    done
    if ((n % 25 == 0)); then
        done_n=$(sql "SELECT coalesce(sum(items_ok),0) FROM executions WHERE run_id IN ($ids) AND success")
        ((done_n >= 3 * JOBS)) && break
    fi
    (($(ms_now) < deadline)) || { echo "footprint: drain not done in 600 s ($done_n)" >&2; exit 1; }
    read -r -t 0.02 -u 9 _ || true
done
drain_ms=$(($(ms_now) - t0))
for s in "${SERVICES[@]}"; do HWM[$s]=$(kib VmHWM "${PID[$s]}"); done
for s in "${SERVICES[@]}"; do stop "$s"; done

# The floor: a C program whose main() only sleeps, linked against exactly
# the shared libraries each service needs (readelf NEEDED, none dropped),
# measured the same way. What the loader and the libraries' constructors
# touch is the part of VmRSS no service code can avoid.
declare -A FLOOR=() FLOOR_NLIB=()
printf '#include <unistd.h>\nint main(void) { for (;;) pause(); }\n' >"$T/floor.c"
for s in "${SERVICES[@]}"; do
    libs=$(readelf -d "$BUILD/btl-$s" | sed -n 's/.*Shared library: \[\(.*\)\]/-l:\1/p' | tr '\n' ' ')
    # shellcheck disable=SC2086
    cc -O2 -o "$T/floor-$s" "$T/floor.c" -Wl,--no-as-needed $libs
    FLOOR_NLIB[$s]=$(ldd "$T/floor-$s" | grep -c '=>')
    "$T/floor-$s" &
    fp=$!
    read -r -t 1 -u 9 _ || true
    FLOOR[$s]=$(kib VmRSS "$fp")
    kill "$fp"; wait "$fp" 2>/dev/null || true
done

pgv=$(sql "SHOW server_version")
cat <<EOF
## Footprint

Machine: $(nproc) CPUs, $(uname -sr); PostgreSQL $pgv (scripts/pg.sh, fsync=off) on the same machine.
Build: $(basename "$BUILD") (Release). Config: offline LLM, file sink, worker concurrency 4, batch 16, BTL_LOG=$BTL_LOG.
Start-to-ready: ms from exec to the first 200 on /health/ready, polled every 2 ms over
/dev/tcp, median of $RUNS (scheduler alone, migrations already applied; each worker with the
scheduler already running). Idle RSS: VmRSS ${IDLE_S} s after the stack was ready.
Loaded: $JOBS noop jobs for each of the three workers, triggered together
(\`nngcat trigger noop_<service>\` $TRIGGERS times, fanout $FANOUT), drained in $drain_ms ms; peak VmRSS sampled
every 20 ms and VmHWM at the end.

Floor: VmRSS of a program whose main() only sleeps, linked against the same shared libraries
as the service (its NEEDED list; the loaded count includes their dependencies).

| service | start-to-ready ms (median; runs) | idle RSS MiB (anon + file) | floor MiB (libraries loaded) | idle RSS above the floor MiB | idle PSS MiB | loaded RSS MiB peak / VmHWM | VSZ MiB | threads |
|---|---|---|---|---|---|---|---|---|
EOF
for s in "${SERVICES[@]}"; do
    printf '| btl-%s | %s (%s) | %s (%s + %s) | %s (%s) | %s | %s | %s / %s | %s | %s |\n' "$s" "${READY[$s]}" "${READY_ALL[$s]// /, }" \
        "$(mib "${IDLE[$s]}")" "$(mib "${IDLE_ANON[$s]}")" "$(mib "${IDLE_FILE[$s]}")" \
        "$(mib "${FLOOR[$s]}")" "${FLOOR_NLIB[$s]}" "$(mib $((IDLE[$s] - FLOOR[$s])))" "$(mib "${PSS[$s]}")" \
        "$(mib "${PEAK[$s]}")" "$(mib "${HWM[$s]}")" "$(mib "${VSZ[$s]}")" "${THR[$s]}"
done
echo
echo "Targets: idle RSS < 8 MiB, start-to-ready < 100 ms."
