#!/usr/bin/env bash
# make compose-test: runs the real docker-compose.yml on this machine through
# podman's Docker-API socket (no Docker engine, no Docker Hub needed).
#
#   1. installs podman, runc, docker-compose, debootstrap, nng-utils if missing
#   2. a private podman config (runc, cgroupfs, ulimits) and API socket
#   3. local stand-ins for the Hub images, built once and cached:
#        debian:bookworm, debian:bookworm-slim  <- debootstrap --variant=minbase
#        postgres:15                            <- bookworm + apt postgresql, an
#                                                  entry point like the official one
#   4. docker-compose build; up -d --scale curator=2 --scale poster=2
#   5. checks: /health/ready, a trigger via nngcat on the control port, posts
#      in the poster sink, every post exactly once across both posters
#   6. docker-compose down -v and the podman service stop, always (trap)
#
# Root on Debian 12. Not part of `make test`. Environment knobs:
#   BTL_CT_WORK      cache and scratch dir      (/var/tmp/btl-compose-test)
#   BTL_CT_DEADLINE  seconds to wait for posts  (420)
#   BTL_CT_MIN_POSTS posts the sink must reach  (3)
#   BTL_CT_KEEP=1    leave the stack running (no down -v) for debugging
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
T0=$SECONDS

WORK=${BTL_CT_WORK:-/var/tmp/btl-compose-test}
DEADLINE=${BTL_CT_DEADLINE:-420}
MIN_POSTS=${BTL_CT_MIN_POSTS:-3}
PROJECT=btlcomposetest
SOCK=$WORK/podman.sock
LOG=$WORK/logs
PG_IMAGE=postgres:15 # what docker-compose.yml names; checked below
MIRROR=${BTL_CT_MIRROR:-http://deb.debian.org/debian}

passed=0
failed=0
results=()
say() { printf '[compose-test %4ds] %s\n' $((SECONDS - T0)) "$*" >&2; }
ok() {
    passed=$((passed + 1))
    results+=("PASS  $*")
    say "PASS $*"
}
bad() {
    failed=$((failed + 1))
    results+=("FAIL  $*")
    say "FAIL $*"
}
info() {
    results+=("INFO  $*")
    say "$*"
}
die() {
    bad "$*"
    exit 1
}

if [ "$(id -u)" -ne 0 ]; then
    echo "compose-test: run as root (rootful podman, apt-get, debootstrap)" >&2
    exit 2
fi
mkdir -p "$WORK" "$LOG"

# ---- 1. packages -------------------------------------------------------------
need=()
for p in podman runc docker-compose debootstrap nng-utils curl python3 ca-certificates; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >"$LOG/apt.log" 2>&1 ||
        die "apt-get install ${need[*]} (see $LOG/apt.log)"
fi

# ---- 2. podman config and API socket -----------------------------------------
# A private containers.conf (CONTAINERS_CONF) instead of editing /etc: no
# systemd here, so cgroupfs and file-based events/logs; runc; sane ulimits.
cat >"$WORK/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=30000:30000"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_CONF=$WORK/containers.conf
export DOCKER_HOST=unix://$SOCK
export COMPOSE_PROJECT_NAME=$PROJECT
ENVF=$WORK/test.env
DC=(docker-compose -f "$ROOT/docker-compose.yml" --env-file "$ENVF")

svc_pid=""
downed=""
summary() {
    echo
    echo "compose-test summary ($((SECONDS - T0)) s, logs in $LOG):"
    for r in "${results[@]}"; do echo "  $r"; done
    echo "$passed passed, $failed failed"
}
# Always: tear the stack down, stop the podman service we started, summarise.
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$svc_pid" ] && [ "${BTL_CT_KEEP:-0}" != 1 ]; then
        if [ -z "$downed" ] && [ -f "$ENVF" ]; then
            say "cleanup: docker-compose down -v"
            "${DC[@]}" logs --no-color >"$LOG/compose.log" 2>&1 || true
            "${DC[@]}" down -v --remove-orphans >"$LOG/down.log" 2>&1 || true
        fi
        kill "$svc_pid" 2>/dev/null || true
        wait "$svc_pid" 2>/dev/null || true
        rm -f "$SOCK"
    fi
    summary
    [ "$rc" != 0 ] || [ "$failed" = 0 ] || rc=1
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -f "$SOCK"
podman system service --time=0 "unix://$SOCK" >"$LOG/podman-service.log" 2>&1 &
svc_pid=$!
for _ in $(seq 1 100); do
    curl -fsS --unix-socket "$SOCK" -o /dev/null http://d/_ping 2>/dev/null && break
    sleep 0.2
done
if curl -fsS --unix-socket "$SOCK" -o /dev/null http://d/_ping 2>/dev/null; then
    ok "podman Docker-API socket answers ($SOCK, podman $(podman version --format '{{.Client.Version}}'))"
else
    die "podman system service did not come up (see $LOG/podman-service.log)"
fi

# ---- 3. local base images (cached) -------------------------------------------
have_image() { podman image exists "$1"; }
# Tag under both spellings: buildah resolves FROM short names in local
# storage, the Docker-compat API normalises them to docker.io/library/.
tag_both() {
    local src=$1 name=$2
    podman tag "$src" "docker.io/library/$name" "localhost/$name"
}
if ! have_image docker.io/library/debian:bookworm; then
    rootfs=$WORK/rootfs
    rm -rf "$rootfs"
    say "debootstrap --variant=minbase bookworm (first run only, a few minutes)"
    debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$LOG/debootstrap.log" 2>&1 ||
        die "debootstrap failed (see $LOG/debootstrap.log)"
    # Same sources as the official image: main, updates, security.
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import -q --change 'CMD ["bash"]' - localhost/btl-ct-base:bookworm >/dev/null ||
        die "podman import of the bookworm rootfs failed"
    rm -rf "$rootfs"
    tag_both localhost/btl-ct-base:bookworm debian:bookworm
fi
have_image docker.io/library/debian:bookworm-slim || tag_both docker.io/library/debian:bookworm debian:bookworm-slim
ok "base images debian:bookworm, debian:bookworm-slim present"

# The compose file must still name the official image we stand in for.
grep -q "image: $PG_IMAGE\$" docker-compose.yml || die "docker-compose.yml no longer uses $PG_IMAGE"
if ! have_image "docker.io/library/$PG_IMAGE"; then
    say "building a local stand-in for $PG_IMAGE (first run only)"
    mkdir -p "$WORK/pg"
    cat >"$WORK/pg/Dockerfile" <<'DF'
FROM debian:bookworm
LABEL org.botticelli.compose-test="stand-in for the official postgres image"
RUN printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d \
 && mkdir -p /etc/postgresql-common \
 && echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.conf \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown postgres:postgres /var/lib/postgresql/data /var/run/postgresql \
 && chmod 0700 /var/lib/postgresql/data
COPY entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV LANG=C.UTF-8 PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
DF
    cat >"$WORK/pg/entrypoint.sh" <<'EP'
#!/bin/sh
# The official image's contract, reduced: POSTGRES_USER/PASSWORD/DB, PGDATA,
# initdb on first start, password auth over TCP.
set -eu
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
bin=/usr/lib/postgresql/15/bin
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pw=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pw"
    "$bin/initdb" -D "$PGDATA" -U "$user" --pwfile="$pw" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pw"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    {
        echo "listen_addresses = '*'"
        echo "unix_socket_directories = '/var/run/postgresql, /tmp'"
    } >>"$PGDATA/postgresql.conf"
    if [ "$db" != postgres ]; then
        echo "CREATE DATABASE \"$db\" OWNER \"$user\"" | "$bin/postgres" --single -D "$PGDATA" postgres >/dev/null
    fi
    echo "initialised $PGDATA (user $user, database $db)"
fi
exec "$bin/postgres" -D "$PGDATA" "$@"
EP
    chmod 0755 "$WORK/pg/entrypoint.sh"
    podman build -q -t "localhost/btl-ct-postgres:15" "$WORK/pg" >"$LOG/pg-build.log" 2>&1 ||
        die "building the postgres stand-in failed (see $LOG/pg-build.log)"
    tag_both localhost/btl-ct-postgres:15 "$PG_IMAGE"
fi
ok "image $PG_IMAGE present (local stand-in unless the official one is cached)"

# ---- 4. test .env, build, up --------------------------------------------------
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
API_PORT=$(free_port)
JWT=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
PGPW=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
# .env.example with the test's values: offline LLM, file sink, posting every
# 10 s all day; generation runs on the nngcat trigger below.
{
    grep -vE '^(POSTGRES_PASSWORD|BTL_JWT_SECRET|BTL_API_PORT|BTL_BUS_BIND|LLM_KIND|POSTING_PLATFORM|BTL_POSTS_FILE|POSTING_SCHEDULE|POSTING_WINDOW_FROM|POSTING_WINDOW_TO|BTL_IMAGE)=' .env.example
    cat <<ENV
POSTGRES_PASSWORD=$PGPW
BTL_JWT_SECRET=$JWT
BTL_API_PORT=$API_PORT
BTL_BUS_BIND=127.0.0.1
LLM_KIND=offline
POSTING_PLATFORM=file
BTL_POSTS_FILE=var/posts.log
POSTING_SCHEDULE=every 10s
POSTING_WINDOW_FROM=00:00
POSTING_WINDOW_TO=00:00
BTL_IMAGE=botticelli:compose-test
ENV
} >"$ENVF"
chmod 600 "$ENVF"
if "${DC[@]}" config -q >"$LOG/config.log" 2>&1; then
    ok "docker-compose config (test env)"
else
    die "docker-compose config (see $LOG/config.log)"
fi

# Leftovers of an interrupted run would hold the ports and the volumes.
"${DC[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
for p in 7450 7451 7452; do
    if ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then
        die "host port $p is in use (the compose file publishes the bus/control ports 7450-7452)"
    fi
done

tb=$SECONDS
say "docker-compose build (log: $LOG/build.log)"
if "${DC[@]}" build >"$LOG/build.log" 2>&1; then
    ok "docker-compose build ($((SECONDS - tb)) s)"
else
    tail -n 30 "$LOG/build.log" >&2
    die "docker-compose build (see $LOG/build.log)"
fi

tu=$SECONDS
if "${DC[@]}" up -d --scale curator=2 --scale poster=2 >"$LOG/up.log" 2>&1; then
    ok "docker-compose up -d --scale curator=2 --scale poster=2"
else
    tail -n 30 "$LOG/up.log" >&2
    die "docker-compose up (see $LOG/up.log)"
fi

count_running() {
    podman ps -q --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$1" | grep -c . || true
}
n_cur=$(count_running curator)
n_post=$(count_running poster)
if [ "$n_cur" = 2 ] && [ "$n_post" = 2 ]; then
    ok "2 curator and 2 poster replicas running"
else
    bad "replicas: curator=$n_cur poster=$n_post (want 2 and 2)"
fi

# ---- 5. checks ----------------------------------------------------------------
API=http://127.0.0.1:$API_PORT
end=$((SECONDS + 180))
code=000
while [ $SECONDS -lt $end ]; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$API/health/ready" 2>/dev/null || true)
    [ "$code" = 200 ] && break
    sleep 1
done
if [ "$code" = 200 ]; then
    ok "scheduler $API/health/ready = 200 ($((SECONDS - tu)) s after up)"
else
    die "scheduler /health/ready = $code after 180 s"
fi

mig=$("${DC[@]}" ps -q migrate 2>/dev/null | head -n1)
mig_state=$(podman inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$mig" 2>/dev/null || echo "missing")
if [ "$mig_state" = "exited 0" ]; then ok "one-shot migrate exited 0"; else bad "migrate state: $mig_state"; fi

if curl -fsS --max-time 5 "$API/metrics" 2>/dev/null | grep -q '^btl_'; then
    ok "scheduler /metrics serves btl_* series"
else
    bad "scheduler /metrics has no btl_* series"
fi

reply=$(nngcat --req --dial tcp://127.0.0.1:7452 --data 'trigger generation' --ascii 2>&1 || true)
if printf '%s' "$reply" | grep -Eq '"ok": ?true'; then
    ok "nngcat trigger generation on the published control port: $reply"
else
    bad "nngcat trigger generation: ${reply:-no reply}"
fi

# Both posters mount the same `posts` volume, so one file holds every post.
read_sink() {
    local c
    c=$("${DC[@]}" ps -q poster 2>/dev/null | head -n1)
    if [ -n "$c" ]; then podman exec "$c" cat /app/var/posts.log 2>/dev/null || true; fi
}
end=$((SECONDS + DEADLINE))
lines=0
tp=$SECONDS
while [ $SECONDS -lt $end ]; do
    lines=$(read_sink | grep -c . || true)
    [ "$lines" -ge "$MIN_POSTS" ] && break
    sleep 3
done
if [ "$lines" -ge "$MIN_POSTS" ]; then
    ok "$lines posts in the file sink $((SECONDS - tp)) s after the trigger"
else
    die "only $lines posts in the sink after $DEADLINE s (want $MIN_POSTS)"
fi
# A few more posting rounds with both posters racing for the queue, then
# stop posting (control socket) so the sink and the database hold still.
sleep 25
reply=$(nngcat --req --dial tcp://127.0.0.1:7452 --data 'pause posting' --ascii 2>&1 || true)
if printf '%s' "$reply" | grep -Eq '"ok": ?true'; then
    ok "nngcat pause posting: $reply"
else
    bad "nngcat pause posting: ${reply:-no reply}"
fi
sleep 5 # a post already claimed finishes
read_sink >"$WORK/posts.log"

# Every line: valid JSON with a post_id; no post id or key twice.
if python3 - "$WORK/posts.log" >"$LOG/sink-check.txt" 2>&1 <<'PY'; then
import json, sys, collections
ids, keys, bad = [], [], 0
for n, line in enumerate(open(sys.argv[1], encoding="utf-8"), 1):
    try:
        o = json.loads(line)
        ids.append(int(o["post_id"])); keys.append(o["idempotency_key"])
        assert o["text"].strip()
    except Exception as e:
        print(f"line {n}: {e!r}: {line[:120]!r}"); bad += 1
dup = [i for i, c in collections.Counter(ids).items() if c > 1]
dupk = [k for k, c in collections.Counter(keys).items() if c > 1]
print(f"lines={len(ids) + bad} distinct_ids={len(set(ids))} bad={bad} dup_ids={dup} dup_keys={dupk}")
print("ids=" + ",".join(map(str, sorted(ids))))
sys.exit(1 if bad or dup or dupk or not ids else 0)
PY
    ok "every sink line is a distinct post: $(head -n1 "$LOG/sink-check.txt")"
else
    bad "sink has duplicates or bad lines: $(head -n3 "$LOG/sink-check.txt" | tr '\n' ' ')"
fi

# The database agrees: the posts marked posted are exactly those in the
# sink, and none is left half-way (posting) or unknown.
pgc=$("${DC[@]}" ps -q postgres 2>/dev/null | head -n1)
psql_q() {
    podman exec "$pgc" psql -h /tmp -U "$(sed -n 's/^POSTGRES_USER=//p' "$ENVF")" \
        -d "$(sed -n 's/^POSTGRES_DB=//p' "$ENVF")" -Atc "$1" 2>&1 || true
}
db_ids=$(psql_q "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM posts WHERE status = 'posted'")
stuck=$(psql_q "SELECT count(*) FROM posts WHERE status IN ('posting', 'unknown')")
sink_ids=$(sed -n 's/^ids=//p' "$LOG/sink-check.txt")
if [ -n "$sink_ids" ] && [ "$sink_ids" = "$db_ids" ] && [ "$stuck" = 0 ]; then
    ok "database: posted = sink exactly (ids ${db_ids//,/ }), none posting/unknown"
else
    bad "sink ids [$sink_ids] vs posted in db [$db_ids], posting/unknown: $stuck"
fi

# Which replica published what (both usually do; the split is chance).
split=""
for c in $(podman ps -q --filter "label=com.docker.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=poster"); do
    split+="$(podman logs "$c" 2>&1 | grep -c '"msg":"posted"' || true) "
done
info "posts published per poster replica: $split"

# Both poster replicas were alive for the whole run.
n_post=$(count_running poster)
if [ "$n_post" = 2 ]; then ok "both poster replicas still running"; else bad "poster replicas running: $n_post"; fi

# ---- 6. teardown --------------------------------------------------------------
"${DC[@]}" logs --no-color >"$LOG/compose.log" 2>&1 || true
if [ "${BTL_CT_KEEP:-0}" = 1 ]; then
    say "BTL_CT_KEEP=1: stack left running (DOCKER_HOST=$DOCKER_HOST, project $PROJECT)"
else
    td=$SECONDS
    if "${DC[@]}" down -v --remove-orphans >"$LOG/down.log" 2>&1; then
        left=$(podman ps -a --filter "label=com.docker.compose.project=$PROJECT" -q | grep -c . || true)
        if [ "$left" = 0 ]; then
            ok "docker-compose down -v ($((SECONDS - td)) s, no containers left)"
        else
            bad "down -v left $left containers"
        fi
    else
        bad "docker-compose down -v (see $LOG/down.log)"
    fi
    downed=1
fi

