#!/usr/bin/env bash
# Runs jobs_check (db + jobs queue) against a private PostgreSQL cluster.
set -euo pipefail
: "${BTL_SRC:?BTL_SRC must point at the repo}"
: "${BTL_BUILD:?BTL_BUILD must point at the build dir}"

dir=$(mktemp -d /tmp/btl-test.XXXXXX)
cleanup() {
    "$BTL_SRC/scripts/pg.sh" stop "$dir" || true
    rm -rf "$dir"
}
trap cleanup EXIT
chmod 755 "$dir" # the cluster may run as another user (pg.sh as root uses btl)

url=$("$BTL_SRC/scripts/pg.sh" start "$dir")
status=0
"$BTL_BUILD/jobs_check" "$url" "$BTL_SRC/migrations" || status=$?
exit "$status"
