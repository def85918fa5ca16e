#!/bin/sh
# Container entry point: the first argument names what to run.
#   scheduler | generator | curator | poster   (or btl-scheduler, ...)
#   migrate | btl ARGS...                      the operator CLI
#   help                                       this text
set -eu
cmd=${1:-help}
[ $# -gt 0 ] && shift
case "$cmd" in
    scheduler | generator | curator | poster) exec "btl-$cmd" "$@" ;;
    btl-scheduler | btl-generator | btl-curator | btl-poster | btl) exec "$cmd" "$@" ;;
    migrate) exec btl migrate "$@" ;;
    help | --help | -h)
        cat <<'TXT'
Botticelli image. Commands:
  btl-scheduler | btl-generator | btl-curator | btl-poster [--http ADDR] [--instance NAME]
  btl migrate            apply database migrations (BTL_MIGRATIONS=/app/migrations)
  btl validate           check the configuration (BTL_CONFIG=/app/config/botticelli.yaml)
  btl ARGS...            the operator CLI (status, tasks, posts, token, ...)
Environment: DATABASE_URL (required), BTL_BUS_CONNECT, BTL_JWT_SECRET, LLM_*, ...
See .env.example and README.md.
TXT
        ;;
    *) exec "$cmd" "$@" ;;
esac
