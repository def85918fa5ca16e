#!/usr/bin/env bash
# A private PostgreSQL cluster in a directory of our own: unix socket in the
# directory plus 127.0.0.1 on a free port. initdb refuses root, so as root the
# cluster belongs to the unprivileged user `btl` (created on demand).
#
#   pg.sh start DIR   create if needed, start, create db `botticelli`, print its URL
#   pg.sh stop DIR    fast shutdown
#   pg.sh url DIR     print the URL of a running cluster
set -euo pipefail
cmd=${1:?usage: pg.sh start|stop|url DIR}
dir=${2:?usage: pg.sh start|stop|url DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bindir/initdb" ] || { echo "pg.sh: PostgreSQL server binaries not found" >&2; exit 1; }

as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u btl -- "$@"
    else
        "$@"
    fi
}

free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$(( 10000 + RANDOM % 22000 ))
        if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then echo $p; return; fi
    done
    echo "pg.sh: no free port" >&2; exit 1
}

url_of() { echo "postgresql://btl@127.0.0.1:$(cat "$dir/port")/botticelli"; }

case "$cmd" in
start)
    if [ "$(id -u)" -eq 0 ]; then
        id btl >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin btl
        chown btl "$dir"
    fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_owner "$bindir/initdb" -D "$dir/data" -U btl --auth=trust -E UTF8 --locale=C.UTF-8 \
            >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    if as_owner "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        url_of; exit 0
    fi
    # BTL_PG_PORT asks for a fixed port (make run), if it is free.
    port=${BTL_PG_PORT:-}
    if [ -z "$port" ] || (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
        port=$(free_port)
    fi
    echo "$port" >"$dir/port"
    as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 -c shared_buffers=128MB" \
        start >/dev/null || { tail -20 "$dir/postgres.log" >&2; exit 1; }
    as_owner "$bindir/psql" -h "$dir" -p "$port" -U btl -d postgres -qAtc \
        "SELECT 1 FROM pg_database WHERE datname='botticelli'" | grep -q 1 ||
        as_owner "$bindir/createdb" -h "$dir" -p "$port" -U btl botticelli
    url_of
    ;;
stop)
    [ -f "$dir/data/PG_VERSION" ] || exit 0
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    ;;
url) url_of ;;
*) echo "usage: pg.sh start|stop|url DIR" >&2; exit 2 ;;
esac
