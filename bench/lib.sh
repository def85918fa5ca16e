# Shared helpers for bench/pipeline.sh, bench/cost.sh, bench/footprint.sh
# and scripts/valgrind.sh: a private PostgreSQL cluster (scripts/pg.sh),
# free ports, the real service binaries
# as background processes, waits with deadlines, CPU accounting per process.
# Source it after setting BENCH_ROOT and BENCH_BUILD; then call bench_setup.
set -euo pipefail

: "${BENCH_ROOT:?set BENCH_ROOT}"
: "${BENCH_BUILD:?set BENCH_BUILD}"
BT=""                 # the run's scratch directory
BPIDS=()              # every process we started, killed on exit
PG_BASE=""            # postgresql://btl@127.0.0.1:PORT (no database)

blog() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

bench_cleanup() {
    local rc=$?
    set +e
    for p in "${BPIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    if [ -n "$BT" ]; then
        bash "$BENCH_ROOT/scripts/pg.sh" stop "$BT/pg" >/dev/null 2>&1
        if [ $rc -ne 0 ]; then
            for f in "$BT"/*/*.log; do
                [ -f "$f" ] || continue
                echo "---- tail of $f" >&2
                tail -n 15 "$f" >&2
            done
        fi
        [ -n "${BENCH_KEEP:-}" ] || rm -rf "$BT"
    fi
    exit $rc
}

bench_setup() { # bench_setup NAME
    for b in btl btl-scheduler btl-generator btl-curator btl-poster fake_llm fake_discord; do
        [ -x "$BENCH_BUILD/$b" ] || { echo "$1: $BENCH_BUILD/$b missing (build first)" >&2; exit 1; }
    done
    for t in psql jq curl nngcat; do
        command -v "$t" >/dev/null || { echo "$1: $t not found" >&2; exit 1; }
    done
    BT=$(mktemp -d "/tmp/btl-$1.XXXXXX")
    chmod 755 "$BT"
    trap bench_cleanup EXIT INT TERM
    local url
    url=$(bash "$BENCH_ROOT/scripts/pg.sh" start "$BT/pg")
    PG_BASE=${url%/*}
    export PGCONNECT_TIMEOUT=5
    export BTL_MIGRATIONS="$BENCH_ROOT/migrations"
    export BTL_LOG=${BTL_LOG:-warn}
}

# bench_setup_tracked NAME: bench_setup for scripts that keep their
# processes in PID[name] (footprint, valgrind): a trap that kills those
# before bench_cleanup, and DATABASE_URL set to a fresh database.
bench_setup_tracked() {
    bench_setup "$1"
    declare -gA PID=()
    trap 'rc=$?; bench_kill_tracked; (exit $rc); bench_cleanup' EXIT INT TERM
    DATABASE_URL=$(fresh_db bench_run)
    export DATABASE_URL
}

bench_kill_tracked() {
    for p in "${PID[@]}"; do kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
}

free_port() {
    local p
    for _ in $(seq 1 500); do
        p=$((10000 + RANDOM % 22000))
        if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && ! grep -qx "$p" "$BT/ports" 2>/dev/null; then
            echo "$p" >>"$BT/ports"
            echo "$p"
            return
        fi
    done
    echo "no free port" >&2
    return 1
}

fresh_db() { # fresh_db NAME: creates it, prints its URL
    psql "$PG_BASE/postgres" -qAtX -c "CREATE DATABASE $1" >/dev/null
    echo "$PG_BASE/$1"
}

sqlq() { psql "$DATABASE_URL" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }

# bstart DIR NAME BINARY ARGS...: background process, log DIR/NAME.log;
# its pid is appended to BPIDS and stored in PID_<NAME>.
bstart() {
    local dir=$1 name=$2 bin=$3
    shift 3
    "$BENCH_BUILD/$bin" "$@" >>"$dir/$name.log" 2>&1 &
    BPIDS+=("$!")
    eval "PID_${name//-/_}=$!"
}
pid_of() { local v="PID_${1//-/_}"; echo "${!v}"; }

# bstop NAME...: SIGTERM, wait up to 10 s, then SIGKILL.
bstop() {
    local n p
    for n in "$@"; do kill -TERM "$(pid_of "$n")" 2>/dev/null || true; done
    for n in "$@"; do
        p=$(pid_of "$n")
        for _ in $(seq 1 200); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}

# wait_until DESC SECONDS CMD...: poll CMD every WAIT_POLL seconds (0.05)
# until it succeeds.
wait_until() {
    local desc=$1 secs=$2
    shift 2
    local deadline=$(($(date +%s%N) / 1000000 + secs * 1000))
    while (($(date +%s%N) / 1000000 < deadline)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep "${WAIT_POLL:-0.05}"
    done
    blog "timed out after ${secs}s waiting for: $desc"
    return 1
}

http_ready() { curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$1/health/ready"; }

# metric_sum PORT NAME [FILTER]: sum of the samples of NAME (whose labels
# contain FILTER) on PORT's /metrics.
metric_sum() {
    curl -fsS --max-time 5 "http://127.0.0.1:$1/metrics" |
        awk -v m="$2" -v f="${3:-}" '($1 == m || index($1, m "{") == 1) && index($1, f) { s += $NF }
            END { printf "%.0f\n", s }'
}

# cpu_ticks PID: user+system clock ticks of one process (0 if gone).
cpu_ticks() {
    local line f
    line=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    line=${line##*) }
    read -r -a f <<<"$line"
    # after "pid (comm) ": f[0]=state ... f[11]=utime f[12]=stime
    echo $((f[11] + f[12]))
}

postgres_pids() { # the cluster's postmaster and its children (the backends)
    local pm s line f
    pm=$(head -1 "$BT/pg/data/postmaster.pid" 2>/dev/null) || return 0
    echo "$pm"
    for s in /proc/[0-9]*/stat; do
        line=$(cat "$s" 2>/dev/null) || continue
        line=${line##*) }
        read -r -a f <<<"$line"
        if [ "${f[1]}" = "$pm" ]; then
            s=${s#/proc/}
            echo "${s%/stat}"
        fi
    done
    return 0
}

# cpu_snapshot FILE GROUP=PID...: one "group pid ticks" line per process.
cpu_snapshot() {
    local out=$1 a
    shift
    : >"$out"
    for a in "$@"; do
        echo "${a%%=*} ${a#*=} $(cpu_ticks "${a#*=}")" >>"$out"
    done
}

# cpu_delta BEFORE AFTER: "group seconds" per group (processes new since
# BEFORE count from 0).
cpu_delta() {
    local hz
    hz=$(getconf CLK_TCK)
    awk -v hz="$hz" 'NR == FNR { b[$1 " " $2] = $3; next }
        { d[$1] += $3 - (($1 " " $2) in b ? b[$1 " " $2] : 0); if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 } }
        END { for (i = 1; i <= n; i++) printf "%s %.2f\n", order[i], d[order[i]] / hz }' "$1" "$2"
}

load1() { cut -d' ' -f1 /proc/loadavg; }
machine_line() {
    local cpu
    cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
    echo "$(nproc) CPUs (${cpu:-unknown CPU}), $(. /etc/os-release && echo "$PRETTY_NAME"), Linux $(uname -r)"
}
