# Shared helpers for integration tests: a private PostgreSQL cluster, free
# ports, the real service binaries as processes, and waits on conditions
# with deadlines (never a blind sleep). Source it; then call btl_setup.
set -euo pipefail

: "${BTL_SRC:?run through ctest (BTL_SRC unset)}"
: "${BTL_BUILD:?run through ctest (BTL_BUILD unset)}"
T=""
PIDS=()
NAMES=()
FAILS=0
PASSES=0

log() { printf '[%s] %s\n' "$(date +%H:%M:%S.%3N)" "$*"; }

fail() {
    log "FAIL: $*"
    FAILS=$((FAILS + 1))
}

pass() {
    log "ok: $*"
    PASSES=$((PASSES + 1))
}

# check DESC CMD...: run CMD, record pass/fail.
check() {
    local desc=$1; shift
    if "$@"; then pass "$desc"; else fail "$desc"; fi
}

free_port() {
    local p
    for _ in $(seq 1 500); do
        p=$(( 10000 + RANDOM % 22000 ))
        if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then
            # Not handed out twice in one test.
            if ! grep -qx "$p" "$T/ports" 2>/dev/null; then echo "$p" >>"$T/ports"; echo "$p"; return; fi
        fi
    done
    echo "no free port" >&2; return 1
}

cleanup() {
    local rc=$?
    set +e
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    wait 2>/dev/null
    if [ -n "$T" ]; then
        "$BTL_SRC/scripts/pg.sh" stop "$T/pg" >/dev/null 2>&1
        if [ $rc -ne 0 ] || [ $FAILS -ne 0 ]; then
            for f in "$T"/*.log; do
                [ -f "$f" ] || continue
                echo "---- tail of $(basename "$f")"; tail -n 40 "$f"
            done
        fi
        rm -rf "$T"
    fi
    exit $rc
}

btl_setup() {
    T=$(mktemp -d /tmp/btl-it.XXXXXX)
    chmod 755 "$T"
    trap cleanup EXIT
    mkdir -p "$T/asan"
    chmod 777 "$T/asan"
    export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}:log_path=$T/asan/asan"
    export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}:log_path=$T/asan/ubsan"
    DATABASE_URL=$("$BTL_SRC/scripts/pg.sh" start "$T/pg")
    export DATABASE_URL
    export PGCONNECT_TIMEOUT=5
    PUB_PORT=$(free_port); COLLECT_PORT=$(free_port); CONTROL_PORT=$(free_port)
    HTTP_SCHED=$(free_port); HTTP_GEN=$(free_port); HTTP_CUR=$(free_port); HTTP_POST=$(free_port)
    export PUB_PORT COLLECT_PORT CONTROL_PORT
    export BTL_MIGRATIONS="$BTL_SRC/migrations"
    export BTL_LOG=${BTL_LOG:-info}
    CONTROL_URL="tcp://127.0.0.1:$CONTROL_PORT"
    export BTL_CONTROL_URL="$CONTROL_URL"
}

# write_config FILE <<EOF ... : a config whose bus ports come from the env.
write_config() {
    local f=$1
    {
        cat <<EOC
database: { url: "\${DATABASE_URL}" }
bus:
  publish: "tcp://127.0.0.1:\${PUB_PORT}"
  collect: "tcp://127.0.0.1:\${COLLECT_PORT}"
  control: "tcp://127.0.0.1:\${CONTROL_PORT}"
  connect: tcp://127.0.0.1
EOC
        cat
    } >"$f"
}

sql() { psql "$DATABASE_URL" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }

# start NAME BINARY ARGS...: run a service in the background, log to $T/NAME.log.
start() {
    local name=$1 bin=$2; shift 2
    "$BTL_BUILD/$bin" "$@" >>"$T/$name.log" 2>&1 &
    PIDS+=("$!")
    NAMES+=("$name")
    eval "PID_${name//-/_}=$!"
}

pid_of() { local v="PID_${1//-/_}"; echo "${!v}"; }

# wait_for DESC SECONDS CMD...: poll CMD until it succeeds or the deadline.
wait_for() {
    local desc=$1 secs=$2; shift 2
    local deadline=$(( $(date +%s%N) / 1000000 + secs * 1000 ))
    while (( $(date +%s%N) / 1000000 < deadline )); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.05
    done
    log "timed out after ${secs}s waiting for: $desc"
    return 1
}

http_ok() { curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$1$2"; }

sql_eq() { [ "$(sql "$1")" = "$2" ]; }
sql_ge() { [ "$(sql "$1")" -ge "$2" ]; }

control() { nngcat --req --dial "$CONTROL_URL" --data "$1" --ascii --recv-timeout 5 2>/dev/null; }

# Sanitizer reports anywhere fail the test.
check_sanitizers() {
    if compgen -G "$T/asan/*" >/dev/null; then
        fail "sanitizer reports:"
        cat "$T"/asan/* | head -80
        return 1
    fi
    pass "no sanitizer reports"
}

finish() {
    check_sanitizers || true
    echo "$PASSES passed, $FAILS failed"
    [ "$FAILS" -eq 0 ]
}

# stop_wait NAME: SIGTERM, then wait on the child itself (max 10 s, then
# SIGKILL); sets STOP_STATUS to the exit status or "timeout". Not for $(...):
# wait needs this shell's child.
stop_wait() {
    local pid dog; pid=$(pid_of "$1")
    rm -f "$T/.stop_timeout"
    kill -TERM "$pid" 2>/dev/null || true
    (
        sleep 10
        if kill -0 "$pid" 2>/dev/null; then touch "$T/.stop_timeout"; kill -KILL "$pid"; fi
    ) >/dev/null 2>&1 &
    dog=$!
    STOP_STATUS=0
    wait "$pid" 2>/dev/null || STOP_STATUS=$?
    kill "$dog" 2>/dev/null || true
    wait "$dog" 2>/dev/null || true
    if [ -f "$T/.stop_timeout" ]; then STOP_STATUS=timeout; rm -f "$T/.stop_timeout"; fi
}

# rss_kib PID: resident set size of a live process in KiB.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# metric PORT NAME: sum of every sample of metric NAME on PORT's /metrics.
metric() {
    curl -fsS --max-time 5 "http://127.0.0.1:$1/metrics" |
        awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $NF } END { printf "%d\n", s }'
}
