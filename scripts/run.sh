#!/usr/bin/env bash
# `make run`: a private Postgres in var/pg, the schema, then the scheduler
# and the three workers with config/botticelli.yaml, logs streamed here.
# Ctrl-C stops the services (SIGTERM, they exit within 10 s) and Postgres.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
ROOT=$(pwd)
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

cat >&2 <<MSG

Botticelli is running.
  database      $DATABASE_URL
  scheduler     http://127.0.0.1:8080/health/ready   metrics: http://127.0.0.1:8080/metrics
  workers       metrics on :8081 (generator) :8082 (curator) :8083 (poster)
  control       nngcat --req --dial tcp://127.0.0.1:7452 --data 'trigger generation' --ascii
  history       $BUILD/btl history generation
  CLI env       export DATABASE_URL=$DATABASE_URL   (for btl migrate/validate)
Ctrl-C stops everything.

MSG
wait
