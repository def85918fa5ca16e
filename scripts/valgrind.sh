#!/usr/bin/env bash
# Each service's start -> work -> SIGTERM cycle under valgrind memcheck.
# One service at a time runs under valgrind, the other three run natively so
# the service under test has real work: a carousel generation run against the
# OpenAI-compatible fake LLM, a curation run scored by it, a post published
# to the fake Discord (libcurl, jansson and the platform code all run), noop
# jobs for every worker, a reload. Not part of `make test`.
#
#   scripts/valgrind.sh BUILD_DIR     a Release build (not ASan: the two clash)
#
# Per service: exit status, "definitely lost" bytes, error count. Exits 1 if
# any service has a definite leak, a memcheck error or a non-zero exit.
set -euo pipefail
BUILD=$(cd "${1:?usage: scripts/valgrind.sh BUILD_DIR}" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SERVICES=(scheduler generator curator poster)
command -v valgrind >/dev/null || { echo "valgrind.sh: valgrind missing" >&2; exit 1; }
# The private cluster, free ports and the scratch dir (kept with VG_KEEP=1)
# come from bench/lib.sh.
BENCH_ROOT=$ROOT BENCH_BUILD=$BUILD BENCH_KEEP=${VG_KEEP:-}
BTL_LOG=${BTL_LOG:-info}
# shellcheck source=../bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_setup_tracked valgrind
T=$BT
PUB_PORT=$(free_port); COLLECT_PORT=$(free_port); CONTROL_PORT=$(free_port)
LLM_PORT=$(free_port); DISCORD_PORT=$(free_port)
export LLM_API_KEY=vg-llm-key DISCORD_TOKEN=vg-discord-token POSTING_CHANNEL_ID=112233445566778899
export CAROUSEL="$ROOT/config/narratives/generation_carousel.yaml" LLM_PORT DISCORD_PORT
declare -A HTTP=()
for s in "${SERVICES[@]}"; do HTTP[$s]=$(free_port); done
export PUB_PORT COLLECT_PORT CONTROL_PORT T
CONTROL_URL="tcp://127.0.0.1:$CONTROL_PORT"

# The pipeline's three tasks, a noop task per worker (the wake -> claim ->
# complete -> report path) and an interval task for the fire loop.
cat >"$T/btl.yaml" <<'EOF'
database: { url: "${DATABASE_URL}" }
bus:
  publish: "tcp://127.0.0.1:${PUB_PORT}"
  collect: "tcp://127.0.0.1:${COLLECT_PORT}"
  control: "tcp://127.0.0.1:${CONTROL_PORT}"
  connect: tcp://127.0.0.1
scheduler: { check_interval: 200ms, failover: 10s, max_consecutive_failures: 1000 }
worker: { concurrency: 2, lease: 60s, poll_fallback: 1s, batch_size: 8 }
providers:
  llm: { kind: openai, base_url: "http://127.0.0.1:${LLM_PORT}/v1", model: fake-model, api_key_env: LLM_API_KEY, timeout: 30s }
platforms:
  discord: { api_base: "http://127.0.0.1:${DISCORD_PORT}/api/v10", token_env: DISCORD_TOKEN, channel_id: "${POSTING_CHANNEL_ID}" }
tasks:
  generation: { service: generator, schedule: "once 2099-01-01T00:00:00Z", narrative: "${CAROUSEL}", iterations: 1 }
  curation:
    service: curator
    schedule: "once 2099-01-01T00:00:00Z"
    execution: { strategy: drain_queue }
    curation: { mode: auto, select_top: 2, min_score: 1, batch_size: 5, on_event: false }
  posting: { service: poster, schedule: "once 2099-01-01T00:00:00Z", platform: discord }
  noop_generator: { service: generator, schedule: "once 2099-01-01T00:00:00Z", job: noop, fanout: 20 }
  noop_curator:   { service: curator,   schedule: "once 2099-01-01T00:00:00Z", job: noop, fanout: 20 }
  noop_poster:    { service: poster,    schedule: "once 2099-01-01T00:00:00Z", job: noop, fanout: 20, platform: discord }
  ticking:        { service: generator, schedule: "every 1s", job: noop }
EOF
"$BUILD/fake_llm" --port "$LLM_PORT" >"$T/fake_llm.log" 2>&1 &
PID[fake_llm]=$!
"$BUILD/fake_discord" --port "$DISCORD_PORT" --record "$T/discord.jsonl" --token "$DISCORD_TOKEN" >"$T/fake_discord.log" 2>&1 &
PID[fake_discord]=$!
"$BUILD/btl" migrate --config "$T/btl.yaml" >/dev/null

sql() { psql "$DATABASE_URL" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }
http_ok() { curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$1$2"; }

# wait_for SECONDS CMD...: poll CMD until it succeeds or the deadline.
wait_for() {
    local secs=$1; shift
    local deadline=$(($(date +%s) + secs))
    while (($(date +%s) < deadline)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

# launch S [valgrind]: S in the background, under memcheck if asked.
launch() {
    local s=$1 vg=${2:-}
    local cmd=("$BUILD/btl-$s" --config "$T/btl.yaml" --http "127.0.0.1:${HTTP[$s]}" --instance "$s-vg")
    if [ -n "$vg" ]; then
        cmd=(valgrind --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=3
            --log-file="$T/vg-$s.txt" "${cmd[@]}")
    fi
    "${cmd[@]}" >>"$T/$s.log" 2>&1 &
    PID[$s]=$!
}

# stop S: SIGTERM, wait up to 180 s (valgrind is slow to exit), else
# SIGKILL; sets STATUS to the exit status or "timeout", STOP_S to the
# seconds it took.
stop() {
    local s=$1 p t0
    p=${PID[$s]}
    t0=${EPOCHREALTIME/[.,]/}
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 1800); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    STOP_S=$(((${EPOCHREALTIME/[.,]/} - t0) / 100000))
    STOP_S="$((STOP_S / 10)).$((STOP_S % 10))"
    if kill -0 "$p" 2>/dev/null; then
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
        STATUS=timeout
    else
        STATUS=0
        wait "$p" 2>/dev/null || STATUS=$?
    fi
    unset "PID[$s]"
}

# trigger TASK MIN_OK: fire it, wait (60 s: valgrind is slow) for its run's
# successful executions to hold at least MIN_OK items.
trigger() {
    local reply id
    reply=$(nngcat --req --dial "$CONTROL_URL" --data "trigger $1" --ascii --recv-timeout 10 2>/dev/null) || return 1
    id=$(sed -n 's/.*"run_id":\([0-9]*\).*/\1/p' <<<"$reply")
    [ -n "$id" ] || { echo "trigger $1: $reply" >&2; return 1; }
    wait_for 60 bash -c "[ \"\$(psql '$DATABASE_URL' -qAtX -c \"SELECT coalesce(sum(items_ok),0) FROM executions WHERE run_id = $id AND success\")\" -ge $2 ]"
}
posted() { sql "SELECT count(*) FROM posts WHERE status = 'posted'"; }

declare -A RES=()
bad=0
for target in ${VG_TARGETS:-${SERVICES[*]}}; do
    : >"$T/vg-$target.txt"
    for s in "${SERVICES[@]}"; do
        if [ "$s" = "$target" ]; then launch "$s" vg; else launch "$s"; fi
        # Workers need the scheduler for ready, so start it first and wait.
        [ "$s" = scheduler ] && { wait_for 120 http_ok "${HTTP[scheduler]}" /health/ready || true; }
    done
    work=ok
    for s in "${SERVICES[@]}"; do wait_for 120 http_ok "${HTTP[$s]}" /health/ready || work="not ready: $s"; done
    if [ "$work" = ok ]; then
        for task in noop_generator noop_curator noop_poster; do
            trigger "$task" 20 || { work="noop jobs not done: $task"; break; }
        done
    fi
    if [ "$work" = ok ]; then
        before=$(posted)
        if ! trigger generation 1; then work="generation produced nothing"
        elif ! trigger curation 1; then work="curation approved nothing"
        elif ! trigger posting 1 || [ "$(posted)" -le "$before" ]; then work="nothing posted"
        fi
    fi
    # Exercise the control path and a reload too while the target runs.
    nngcat --req --dial "$CONTROL_URL" --data reload --ascii --recv-timeout 10 >/dev/null 2>&1 || true
    sleep 2
    # The target first, so its SIGTERM path runs with its peers still up.
    stop "$target"
    st=$STATUS
    stop_s=$STOP_S
    for s in "${SERVICES[@]}"; do [ -n "${PID[$s]:-}" ] && stop "$s"; done
    # The fake LLM repeats its texts: without this the next cycle's posts
    # would be duplicates, skipped before the curator and poster see them.
    sql "DELETE FROM posts"
    lost=$(sed -n 's/.*definitely lost: \([0-9,]*\) bytes.*/\1/p' "$T/vg-$target.txt" | tail -1 | tr -d ,)
    errs=$(sed -n 's/.*ERROR SUMMARY: \([0-9,]*\) errors.*/\1/p' "$T/vg-$target.txt" | tail -1 | tr -d ,)
    # No "definitely lost" line means memcheck found no leaks at all.
    grep -q 'All heap blocks were freed' "$T/vg-$target.txt" && lost=${lost:-0}
    : "${lost:=?}" "${errs:=?}"
    RES[$target]="| btl-$target | $st | $stop_s | $lost | $errs | $work |"
    if [ "$st" != 0 ] || [ "$lost" != 0 ] || [ "$errs" != 0 ] || [ "$work" != ok ]; then
        bad=1
        echo "---- btl-$target: memcheck report" >&2
        grep -E '^==[0-9]+== ' "$T/vg-$target.txt" | tail -60 >&2
    fi
done

echo "$(valgrind --version), $(nproc) CPUs, build $(basename "$BUILD"); flags: --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=3"
echo
echo "| service | exit status | SIGTERM to exit, s | definitely lost (bytes) | errors | work |"
echo "|---|---|---|---|---|---|"
for s in ${VG_TARGETS:-${SERVICES[*]}}; do echo "${RES[$s]}"; done
exit $bad
