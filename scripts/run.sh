#!/usr/bin/env bash
# `make run`: a private Postgres in var/pg, the schema, then the scheduler
# and the three workers with config/botticelli.yaml, logs streamed here.
# Ctrl-C stops the services (SIGTERM, they exit within 10 s) and Postgres.
#
# Demo pacing: the shipped config posts every 2 h inside 09:00-21:00 Berlin
# and generates once a day, first a day after start. That is right for
# production and useless for a demo, so unless BTL_DEMO=0 this script exports
# the overrides below (each only when the variable is not set already) and
# fires one generation run at start: with the offline provider and the file
# sink, posts reach var/posts.log within a minute.
#
#   scripts/run.sh [BUILD]        start everything (BUILD defaults to build)
#   scripts/run.sh --demo-env     print the demo overrides as `export` lines
#                                 (the pipeline test evaluates them)
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_VARS=(
    "BTL_GENERATION_SCHEDULE=every 10m" # plus one run at start, below
    "BTL_GENERATION_ITERATIONS=2"       # 2 x 5 angles = 10 candidates a run
    "BTL_GENERATION_JITTER=0"
    "POSTING_SCHEDULE=every 15s"
    "POSTING_JITTER_PERCENT=0"
    "POSTING_WINDOW_FROM=00:00" # from == to: open all day
    "POSTING_WINDOW_TO=00:00"
)
DEMO=${BTL_DEMO:-1}

# Export each demo override the caller has not set; print them with -p.
demo_env() {
    local kv name
    for kv in "${DEMO_VARS[@]}"; do
        name=${kv%%=*}
        if [ -z "${!name+x}" ]; then export "$name=${kv#*=}"; fi
        if [ "${1:-}" = -p ]; then printf 'export %s=%q\n' "$name" "${!name}"; fi
    done
}

if [ "${1:-}" = --demo-env ]; then
    demo_env -p
    exit 0
fi

BUILD=${1:-build}
ROOT=$(pwd)
[ "$DEMO" = 0 ] || demo_env
mkdir -p var
chmod 755 var
DATABASE_URL=$(BTL_PG_PORT=${BTL_PG_PORT:-54329} scripts/pg.sh start var/pg)
export DATABASE_URL
export BTL_CONFIG=${BTL_CONFIG:-config/botticelli.yaml}
export BTL_MIGRATIONS="$ROOT/migrations"

pids=()
stop_all() {
    trap - INT TERM EXIT
    echo "stopping services..." >&2
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    scripts/pg.sh stop var/pg
    echo "stopped." >&2
}
trap stop_all INT TERM EXIT

"$BUILD/btl" validate "$BTL_CONFIG"
"$BUILD/btl" migrate

start() {
    local name=$1 port=$2
    # Process substitution keeps $! the service itself, so Ctrl-C reaches it.
    "$BUILD/btl-$name" --config "$BTL_CONFIG" --http "127.0.0.1:$port" \
        --instance "$name-local" > >(sed -u "s/^/[$name] /") 2>&1 &
    pids+=("$!")
}
start scheduler 8080
start generator 8081
start curator 8082
start poster 8083

# One generation run now instead of a day from now. The trigger needs the
# scheduler up and its tasks synced, so retry until it answers (30 s).
trigger_generation() {
    local deadline=$((SECONDS + 30)) out
    while [ $SECONDS -lt $deadline ]; do
        if curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:8080/health/ready 2>/dev/null &&
            out=$("$BUILD/btl" trigger generation --config "$BTL_CONFIG" 2>&1); then
            echo "[run] $out" >&2
            return 0
        fi
        sleep 0.5
    done
    echo "[run] could not trigger generation: ${out:-scheduler not ready}" >&2
}

if [ "$DEMO" = 0 ]; then
    PACING="production pacing (BTL_DEMO=0): the schedules and window of $BTL_CONFIG"
else
    trigger_generation
    PACING="demo pacing: generation now and $BTL_GENERATION_SCHEDULE ($BTL_GENERATION_ITERATIONS x 5 angles),
                posting $POSTING_SCHEDULE, window $POSTING_WINDOW_FROM-$POSTING_WINDOW_TO
                -> with LLM_KIND=${LLM_KIND:-offline} and POSTING_PLATFORM=${POSTING_PLATFORM:-file}, posts appear in
                   ${BTL_POSTS_FILE:-var/posts.log} within a minute (BTL_DEMO=0: production schedules)"
fi

cat >&2 <<MSG

Botticelli is running.
  pacing      $PACING
  database    $DATABASE_URL
  scheduler   http://127.0.0.1:8080/health/ready   metrics: http://127.0.0.1:8080/metrics
  workers     metrics on :8081 (generator) :8082 (curator) :8083 (poster)
  posts       tail -f ${BTL_POSTS_FILE:-var/posts.log}      DATABASE_URL=$DATABASE_URL $BUILD/btl posts
  control     $BUILD/btl trigger generation   (or: nngcat --req --dial tcp://127.0.0.1:7452 --data 'trigger generation' --ascii)
  history     $BUILD/btl history posting
Ctrl-C stops everything.

MSG
wait
