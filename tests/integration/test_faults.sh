#!/usr/bin/env bash
# Fault injection: the whole pipeline under load while things break.
#
# 2 schedulers, 3 generators, 3 curators, 3 posters (real processes, real
# Postgres, real nng) turn generation runs of the shipped carousel into
# posts at a fake Discord, through a fake LLM that is slow now and then
# (5 s) and answers with random 429/500/garbage/non-JSON, and a fake
# Discord that answers with random 429 (retry_after), 500, 403 and
# timeouts. Meanwhile:
#   * every ~2 s a random service instance is SIGKILLed (restarted on the
#     next round);
#   * Postgres is stopped (pg_ctl -m fast, and -m immediate in the full
#     run) mid-run: every service's /health/ready goes false, then true
#     after the restart;
#   * the leading scheduler is SIGKILLed: the standby fires within
#     scheduler.failover;
#   * malformed frames (bus_flood: random, truncated, mutated, wrong types,
#     trailing bytes, oversize) hit a scheduler's collect socket and junk
#     requests its control socket: every one is counted as rejected.
# Then: no message twice at the fake Discord (by nonce, by content), every
# post ends posted, failed, unknown or rejected with its reason, every
# generation job ends done (or dead with its error), no task fired twice
# for one due time, the services' RSS stayed under the bound, no sanitizer
# report, and SIGTERM still exits 0 everywhere.
#
# BTL_PROOF=full selects the full run (1,000 posts, >= 100 kills, 100,000
# junk frames, four Postgres restarts, three leader kills; make proof);
# default is the short run for make test. The last lines printed are the
# figures ("FIGURE key value"), which scripts/proof.sh copies into
# docs/RELIABILITY.md. BTL_FAULTS_SEED fixes the random choices.
source "$(dirname "$0")/lib.sh"
# ASan's quarantine (256 MiB by default) would make RSS follow the volume
# of work instead of what the service keeps: a small one makes the bound
# meaningful (as in test_garbage).
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}:quarantine_size_mb=8"
btl_setup
export T

MODE=${BTL_PROOF:-short}
SEED=${BTL_FAULTS_SEED:-$(( $(date +%s) % 100000 ))}
RANDOM=$SEED
if [ "$MODE" = full ]; then
    ITER=200            # x 5 narratives = 1,000 generation jobs
    MIN_KILLS=100
    FLOOD_BUS=90000
    FLOOD_CTL=10000
    FANOUT=8
    CHAOS_DEADLINE=1800
    # Events by chaos round: leader kills, Postgres outages (mode), flood.
    LEADER_AT="6 36 66"
    PG_AT="16:fast 31:immediate 46:fast 61:immediate"
    FLOOD_AT=21
    LLM_FAULTS="--random-fail 3"
else
    ITER=12             # 60 generation jobs
    MIN_KILLS=10
    FLOOD_BUS=9000
    FLOOD_CTL=1000
    FANOUT=4
    CHAOS_DEADLINE=150
    LEADER_AT="2"
    PG_AT="4:fast"
    FLOOD_AT=6
    # At most 12 faults: a job failing 4 times would wait 4^4 s for its
    # next attempt (the queue's backoff), longer than make test may take.
    LLM_FAULTS="--random-fail 5 --random-fail-max 12"
fi
NPOSTS=$((ITER * 5))
RSS_BOUND_MIB=${BTL_FAULTS_RSS_MIB:-200} # per process, ASan build, quarantine 8 MiB
FAILOVER_S=3
log "fault injection: mode $MODE, seed $SEED, $NPOSTS generation jobs, >= $MIN_KILLS kills"

CAROUSEL="$BTL_SRC/config/narratives/generation_carousel.yaml"
export LLM_API_KEY="sk-test-$RANDOM$RANDOM"
export DISCORD_TOKEN="bot-token-$RANDOM$RANDOM"
export POSTING_CHANNEL_ID=556677889900112233
LLM_PORT=$(free_port)
DISCORD_PORT=$(free_port)
export LLM_PORT DISCORD_PORT CAROUSEL ITER FANOUT FAILOVER_S

# ---- the fakes ---------------------------------------------------------------
LREC="$T/llm.jsonl"
DREC="$T/discord.jsonl"
# 3-5 % of LLM calls fail (429 / 500 / cut-off body / prose instead of
# JSON), 2 % take 5 s longer.
# shellcheck disable=SC2086
start fake_llm fake_llm --port "$LLM_PORT" --record "$LREC" --seed "$SEED" \
    $LLM_FAULTS --random-kinds 429,500,garbage,badjson --retry-after 1 \
    --slow-pct 2 --slow-ms 5000
# 10 % of Discord requests fail: 429 (retry_after 0.2-2 s), 500, 403 50013,
# or a 5 s wait (the poster's timeout is 2 s: the outcome is unknown).
start fake_discord fake_discord --port "$DISCORD_PORT" --record "$DREC" --token "$DISCORD_TOKEN" \
    --seed "$SEED" --random-fail 10 --random-kinds 429,500,timeout,403 --timeout-ms 5000
check "fake LLM listening" wait_for "fake_llm" 20 grep -q "^listening $LLM_PORT" "$T/fake_llm.log"
check "fake Discord listening" wait_for "fake_discord" 20 grep -q "^listening $DISCORD_PORT" "$T/fake_discord.log"

# ---- configuration: one per scheduler (its own bus ports) --------------------
B_PUB=$(free_port); B_COLLECT=$(free_port); B_CONTROL=$(free_port)
make_config() { # FILE PUB COLLECT CONTROL
    sed -e "s/@PUB@/$2/" -e "s/@COLLECT@/$3/" -e "s/@CONTROL@/$4/" >"$1" <<'EOF'
database: { url: "${DATABASE_URL}" }
bus:
  publish: "tcp://127.0.0.1:@PUB@"
  collect: "tcp://127.0.0.1:@COLLECT@"
  control: "tcp://127.0.0.1:@CONTROL@"
  connect: tcp://127.0.0.1
scheduler: { check_interval: 200ms, failover: "${FAILOVER_S}s", max_consecutive_failures: 1000 }
worker: { concurrency: 3, lease: 4s, poll_fallback: 500ms, batch_size: 4, max_attempts: 10 }
providers:
  llm: { kind: openai, base_url: "http://127.0.0.1:${LLM_PORT}/v1", model: fake-model, api_key_env: LLM_API_KEY, timeout: 7s }
platforms:
  discord: { api_base: "http://127.0.0.1:${DISCORD_PORT}/api/v10", token_env: DISCORD_TOKEN, channel_id: "${POSTING_CHANNEL_ID}" }
tasks:
  generation:
    service: generator
    schedule: "once 2099-01-01T00:00:00Z"
    narrative: "${CAROUSEL}"
    iterations: ${ITER}
    execution: { max_retries: 9 }
  curation:
    service: curator
    schedule: "every 3s"
    execution: { strategy: drain_queue, max_retries: 9, continue_on_error: true }
    curation: { mode: auto, select_top: 1000, min_score: 0, batch_size: 10, on_event: true, near_duplicate: { days: 0 } }
  posting:
    service: poster
    schedule: "every 1s"
    jitter_percent: 0
    platform: discord
    fanout: ${FANOUT}
    execution: { max_retries: 0 }
EOF
}
make_config "$T/a.yaml" "$PUB_PORT" "$COLLECT_PORT" "$CONTROL_PORT"
make_config "$T/b.yaml" "$B_PUB" "$B_COLLECT" "$B_CONTROL"
check "config validates" "$BTL_BUILD/btl" validate "$T/a.yaml"

# ---- the instances -------------------------------------------------------------
# name -> "binary config"; workers 1-2 dial scheduler a, 3 dials b (their
# ticks and events go through "their" scheduler; the database is shared).
declare -A BIN CFG HTTP CTL
INSTANCES="sched-a sched-b gen-1 gen-2 gen-3 cur-1 cur-2 cur-3 post-1 post-2 post-3"
for n in $INSTANCES; do
    case $n in
    sched-*) BIN[$n]=btl-scheduler ;;
    gen-*) BIN[$n]=btl-generator ;;
    cur-*) BIN[$n]=btl-curator ;;
    post-*) BIN[$n]=btl-poster ;;
    esac
    case $n in sched-b | *-3 | post-2) CFG[$n]=$T/b.yaml ;; *) CFG[$n]=$T/a.yaml ;; esac
    HTTP[$n]=$(free_port)
done
HTTP[sched-a]=$HTTP_SCHED
CTL[sched-a]="tcp://127.0.0.1:$CONTROL_PORT"
CTL[sched-b]="tcp://127.0.0.1:$B_CONTROL"

launch() { start "$1" "${BIN[$1]}" --config "${CFG[$1]}" --http "127.0.0.1:${HTTP[$1]}" --instance "$1"; }
ready() { http_ok "${HTTP[$1]}" /health/ready; }
not_ready() {
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:${HTTP[$1]}/health/ready")
    [ "$code" != 200 ]
}
ping_of() { nngcat --req --dial "${CTL[$1]}" --data ping --ascii --recv-timeout 2 2>/dev/null; }
is_leader() { ping_of "$1" | grep -q '"leader":true'; }
leader() { local s; for s in sched-a sched-b; do if is_leader "$s"; then echo "$s"; return 0; fi; done; return 1; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
ts() { echo "to_timestamp($1 / 1000.0)"; }

launch sched-a
check "sched-a ready" wait_for "sched-a ready" 30 ready sched-a
check "sched-a leads" wait_for "sched-a leader" 15 is_leader sched-a
for n in $INSTANCES; do [ "$n" = sched-a ] || launch "$n"; done
for n in $INSTANCES; do
    check "$n ready" wait_for "$n ready" 60 ready "$n"
done
check "tasks synced" wait_for "tasks" 20 sql_eq "SELECT count(*) FROM tasks WHERE task_id IN ('generation','curation','posting')" 3

reply=$(nngcat --req --dial "${CTL[sched-a]}" --data "trigger generation" --ascii --recv-timeout 5 2>/dev/null || true)
GEN_RUN=$(sed -n 's/.*"run_id":\([0-9]*\).*/\1/p' <<<"$reply")
check "generation triggered (run ${GEN_RUN:-none})" test -n "$GEN_RUN"
GEN_RUN=${GEN_RUN:-0}
T_START=$(date +%s)

# ---- figures and bookkeeping -----------------------------------------------------
declare -A DOWN       # killed, to be restarted next round
declare -A RSS_MAX    # per instance name, KiB
KILLS=0
declare -A KILLS_BY
PG_RESTARTS=0
FAILOVER_MAX_MS=0
FAILOVERS=""
FLOOD_STATE=none      # none | running | done
FLOOD_REJ=0; FLOOD_SENT=0; FLOOD_CTL_SENT=0; FLOOD_CTL_ERR=0; FLOOD_CTL_OK=0; FLOOD_CTL_REPLIES=0
UNREADY_SEEN=""

sample_rss() {
    local n pid r
    for n in $INSTANCES; do
        [ -n "${DOWN[$n]:-}" ] && continue
        pid=$(pid_of "$n")
        r=$(rss_kib "$pid" 2>/dev/null || echo 0)
        [ -n "$r" ] || r=0
        if [ "$r" -gt "${RSS_MAX[$n]:-0}" ]; then RSS_MAX[$n]=$r; fi
    done
}

# Every instance not killed on purpose must still run: a service that
# died on its own is a crash.
check_alive() {
    local n pid
    for n in $INSTANCES; do
        [ -n "${DOWN[$n]:-}" ] && continue
        pid=$(pid_of "$n")
        if ! kill -0 "$pid" 2>/dev/null; then
            local st=0
            wait "$pid" 2>/dev/null || st=$?
            fail "$n died on its own (exit status $st); tail of its log:"
            tail -n 30 "$T/$n.log"
            launch "$n"
        fi
    done
}

kill_instance() { # NAME
    local pid; pid=$(pid_of "$1")
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    DOWN[$1]=1
    KILLS=$((KILLS + 1))
    KILLS_BY[${1%-*}]=$(( ${KILLS_BY[${1%-*}]:-0} + 1 ))
}

restart_down() {
    local n
    for n in "${!DOWN[@]}"; do
        launch "$n"
        unset "DOWN[$n]"
    done
}

all_ready() { local n; for n in $INSTANCES; do ready "$n" || return 1; done; }
all_not_ready() { local n; for n in $INSTANCES; do not_ready "$n" || return 1; done; }

PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
pg_owner() { if [ "$(id -u)" -eq 0 ]; then runuser -u btl -- "$@"; else "$@"; fi; }

# Postgres outage: stop with MODE, see every service report not ready,
# start it again on the same port, see every service ready again.
pg_outage() { # MODE
    local mode=$1 t0 t1 port
    restart_down
    wait_for "all ready before the outage" 60 all_ready || true
    port=$(cat "$T/pg/port")
    t0=$(now_ms)
    check "pg_ctl stop -m $mode" pg_owner "$PGBIN/pg_ctl" -D "$T/pg/data" -m "$mode" -w -t 60 stop
    if wait_for "every service not ready (database down)" 30 all_not_ready; then
        pass "postgres down ($mode): all 11 services report /health/ready false"
    else
        local n bad=""
        for n in $INSTANCES; do not_ready "$n" || bad="$bad $n"; done
        fail "postgres down ($mode): still ready:$bad"
    fi
    check "postgres started again on port $port" pg_owner "$PGBIN/pg_ctl" -D "$T/pg/data" \
        -l "$T/pg/postgres.log" -w -t 60 \
        -o "-p $port -k $T/pg -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 -c shared_buffers=128MB" start
    if wait_for "every service ready again" 60 all_ready; then
        t1=$(now_ms)
        pass "postgres restart ($mode): all 11 services ready again $((t1 - t0)) ms after the stop"
    else
        local n bad=""
        for n in $INSTANCES; do ready "$n" || bad="$bad $n"; done
        fail "postgres restart ($mode): not ready again within 60 s:$bad"
    fi
    PG_RESTARTS=$((PG_RESTARTS + 1))
}

# Leader SIGKILL: the standby must fire within scheduler.failover.
leader_kill() {
    local L S t0 first ms
    restart_down
    wait_for "sched ready" 30 ready sched-a || true
    wait_for "sched ready" 30 ready sched-b || true
    L=$(leader || true)
    if [ -z "$L" ]; then fail "no leader before the leader kill"; return; fi
    S=$([ "$L" = sched-a ] && echo sched-b || echo sched-a)
    check "$S is the standby" bash -c "nngcat --req --dial ${CTL[$S]} --data ping --ascii --recv-timeout 2 | grep -q '\"leader\":false'"
    t0=$(now_ms)
    kill_instance "$L"
    log "kill $KILLS: $L (the leader)"
    if wait_for "$S fires" $((FAILOVER_S + 10)) sql_ge \
        "SELECT count(*) FROM task_runs WHERE fired_by = '$S' AND fired_at > $(ts "$t0")" 1; then
        first=$(sql "SELECT (extract(epoch FROM min(fired_at)) * 1000)::bigint FROM task_runs WHERE fired_by = '$S' AND fired_at > $(ts "$t0")")
        ms=$((first - t0))
        FAILOVERS="$FAILOVERS $ms"
        [ "$ms" -gt "$FAILOVER_MAX_MS" ] && FAILOVER_MAX_MS=$ms
        check "leader $L SIGKILLed: standby $S fired ${ms} ms later (failover ${FAILOVER_S} s)" \
            test "$ms" -le $((FAILOVER_S * 1000))
    else
        fail "leader $L SIGKILLed: standby $S did not fire within $((FAILOVER_S + 10)) s"
    fi
}

# Junk at sched-a's collect and control sockets, in the background; sched-a
# is kept out of the kill pool until its counters are read.
flood_start() {
    restart_down
    wait_for "sched-a ready" 30 ready sched-a || true
    FLOOD_REJ0=$(metric "${HTTP[sched-a]}" btl_bus_frames_rejected_total)
    FLOOD_CTLBAD0=$(ctl_bad)
    FLOOD_RSS0=$(rss_kib "$(pid_of sched-a)")
    # A few through nngcat itself (random bytes after a real topic), the
    # bulk from the generator over one connection each.
    local k
    mkdir -p "$T/nngcat"
    for k in $(seq 1 10); do
        { printf 'exec.result '; head -c $((RANDOM % 500 + 1)) /dev/urandom; } >"$T/nngcat/bus$k"
        nngcat --push --dial "tcp://127.0.0.1:$COLLECT_PORT" --file "$T/nngcat/bus$k" --send-timeout 5 2>>"$T/nngcat.err" || true
        head -c $((RANDOM % 500 + 1)) /dev/urandom | base64 -w0 | tr '+/=' ' ;x' >"$T/nngcat/ctl$k"
        nngcat --req --dial "${CTL[sched-a]}" --file "$T/nngcat/ctl$k" --raw --recv-timeout 5 >"$T/nngcat/rep$k" 2>>"$T/nngcat.err" || true
    done
    FLOOD_NNGCAT_OK=$(grep -l '"ok":false' "$T"/nngcat/rep* 2>/dev/null | wc -l)
    "$BTL_BUILD/bus_flood" --gen "$FLOOD_BUS" --seed "$SEED" --oversize 3 \
        "tcp://127.0.0.1:$COLLECT_PORT" >"$T/flood_bus.out" 2>"$T/flood_bus.err" &
    FLOOD_PID1=$!
    "$BTL_BUILD/bus_flood" --req "$FLOOD_CTL" --seed "$SEED" \
        "${CTL[sched-a]}" >"$T/flood_ctl.out" 2>"$T/flood_ctl.err" &
    FLOOD_PID2=$!
    FLOOD_T0=$(now_ms)
    FLOOD_STATE=running
    log "flood started: $FLOOD_BUS + 10 (nngcat) bus frames, $FLOOD_CTL + 10 (nngcat) control requests at sched-a"
}
ctl_bad() {
    curl -fsS --max-time 5 "http://127.0.0.1:${HTTP[sched-a]}/metrics" |
        awk '/^btl_control_requests_total\{.*"(invalid|unknown)"/ {s += $NF} END {printf "%d\n", s}'
}
kv() { sed -n "s/.*\\b$1=\\([0-9]*\\).*/\\1/p" "$2"; }
flood_poll() { # when both senders are done, wait for the counters
    [ "$FLOOD_STATE" = running ] || return 0
    kill -0 "$FLOOD_PID1" 2>/dev/null && return 0
    kill -0 "$FLOOD_PID2" 2>/dev/null && return 0
    local rc1=0 rc2=0
    wait "$FLOOD_PID1" || rc1=$?
    wait "$FLOOD_PID2" || rc2=$?
    FLOOD_STATE=done
    log "flood senders done after $(( $(now_ms) - FLOOD_T0 )) ms: bus [$(cat "$T/flood_bus.out")] control [$(cat "$T/flood_ctl.out")]"
    check "bus_flood handed every frame to nng (exit $rc1)" test "$rc1" = 0
    check "every control junk request was answered (exit $rc2)" test "$rc2" = 0
    FLOOD_SENT=$(kv sent "$T/flood_bus.out"); FLOOD_SENT=$(( ${FLOOD_SENT:-0} + 10 ))
    FLOOD_CTL_SENT=$(kv sent "$T/flood_ctl.out"); FLOOD_CTL_SENT=$(( ${FLOOD_CTL_SENT:-0} + 10 ))
    FLOOD_CTL_REPLIES=$(kv replies "$T/flood_ctl.out"); FLOOD_CTL_REPLIES=${FLOOD_CTL_REPLIES:-0}
    FLOOD_CTL_ERR=$(kv error_replies "$T/flood_ctl.out"); FLOOD_CTL_ERR=$(( ${FLOOD_CTL_ERR:-0} + FLOOD_NNGCAT_OK ))
    FLOOD_CTL_OK=$(kv ok_replies "$T/flood_ctl.out"); FLOOD_CTL_OK=${FLOOD_CTL_OK:-0}
    rej_reached() { [ $(( $(metric "${HTTP[sched-a]}" btl_bus_frames_rejected_total) - FLOOD_REJ0 )) -ge "$FLOOD_SENT" ]; }
    wait_for "rejections counted" 60 rej_reached || true
    FLOOD_REJ=$(( $(metric "${HTTP[sched-a]}" btl_bus_frames_rejected_total) - FLOOD_REJ0 ))
    check "sched-a counted every malformed frame in btl_bus_frames_rejected_total ($FLOOD_REJ of $FLOOD_SENT sent)" \
        test "$FLOOD_REJ" -eq "$FLOOD_SENT"
    check "every junk control request answered with an error ($FLOOD_CTL_ERR of $FLOOD_CTL_SENT, $FLOOD_CTL_OK ok)" \
        test "$FLOOD_CTL_ERR" -eq "$FLOOD_CTL_SENT" -a "$FLOOD_CTL_OK" -eq 0
    local cb; cb=$(( $(ctl_bad) - FLOOD_CTLBAD0 ))
    check "btl_control_requests_total counts them as invalid/unknown (+$cb)" test "$cb" -ge "$FLOOD_CTL_SENT"
    check "sched-a still answers ping after the flood" bash -c "nngcat --req --dial ${CTL[sched-a]} --data ping --ascii --recv-timeout 5 | grep -q '\"ok\":true'"
    log "sched-a RSS before the flood ${FLOOD_RSS0} KiB, after $(rss_kib "$(pid_of sched-a)") KiB"
    log "rejects by reason: $(curl -fsS "http://127.0.0.1:${HTTP[sched-a]}/metrics" | grep '^btl_bus_frames_rejected_total' | tr '\n' ' ')"
}

# Done: every generation job finished, no post waiting for a decision or a
# publish.
settled() {
    [ "$(sql "SELECT (SELECT count(*) FROM jobs WHERE run_id = $GEN_RUN AND status NOT IN ('done', 'dead')) +
                     (SELECT count(*) FROM posts WHERE status IN ('pending', 'approved', 'posting'))")" = 0 ] &&
        sql_ge "SELECT count(*) FROM jobs WHERE run_id = $GEN_RUN AND kind = 'generate.post'" "$NPOSTS"
}

event_at() { # ROUND LIST -> matching entry
    local e
    for e in $2; do [ "${e%%:*}" = "$1" ] && { echo "$e"; return 0; }; done
    return 1
}

# ---- chaos ------------------------------------------------------------------------
# Every job here takes seconds (LLM calls time out after 7 s): one that has
# been running for two minutes is held by nobody alive, yet its lease is kept.
STUCK_SQL="SELECT count(*) FROM jobs WHERE status = 'running' AND attempted_at < now() - interval '120 seconds'"
STUCK=0
ROUND=0
T_CHAOS=$(date +%s)
while :; do
    ROUND=$((ROUND + 1))
    check_alive
    restart_down
    flood_poll
    if [ "$KILLS" -ge "$MIN_KILLS" ] && [ "$FLOOD_STATE" = done ] && settled; then break; fi
    # A job running for two minutes is held by nobody alive: the pipeline
    # cannot settle, stop waiting for it (checked and shown below).
    if [ $((ROUND % 5)) = 0 ] && ! sql_eq "$STUCK_SQL" 0; then
        fail "chaos: jobs stuck running for over 120 s (round $ROUND): the pipeline cannot settle"
        STUCK=1
        break
    fi
    if [ $(( $(date +%s) - T_CHAOS )) -ge "$CHAOS_DEADLINE" ]; then
        fail "chaos: not settled within ${CHAOS_DEADLINE} s (round $ROUND, $KILLS kills)"
        break
    fi
    if event_at "$ROUND" "$LEADER_AT" >/dev/null; then leader_kill; fi
    if e=$(event_at "$ROUND" "$PG_AT"); then pg_outage "${e#*:}"; fi
    if [ "$ROUND" = "$FLOOD_AT" ]; then flood_start; fi
    # A random victim (not sched-a while the flood's counters are pending).
    pool=()
    for n in $INSTANCES; do
        [ -n "${DOWN[$n]:-}" ] && continue
        [ "$n" = sched-a ] && [ "$FLOOD_STATE" = running ] && continue
        # Never both schedulers down at once.
        case $n in sched-*) [ -n "${DOWN[sched-a]:-}${DOWN[sched-b]:-}" ] && continue ;; esac
        pool+=("$n")
    done
    victim=${pool[$((RANDOM % ${#pool[@]}))]}
    sample_rss
    kill_instance "$victim"
    log "kill $KILLS: $victim"
    if [ $((ROUND % 5)) = 0 ]; then
        log "round $ROUND: $KILLS kills; posts: $(sql "SELECT string_agg(status || '=' || n, ' ') FROM (SELECT status, count(*) n FROM posts GROUP BY 1 ORDER BY 1) x"); gen jobs open: $(sql "SELECT count(*) FROM jobs WHERE run_id = $GEN_RUN AND status NOT IN ('done','dead')")"
    fi
    # The pace of the chaos, not a wait for a condition.
    sleep 2
done
T_CHAOS_END=$(date +%s)
restart_down
log "chaos over after $ROUND rounds, $KILLS kills, $((T_CHAOS_END - T_CHAOS)) s"
check "kills: $KILLS >= $MIN_KILLS" test "$KILLS" -ge "$MIN_KILLS"
for n in $INSTANCES; do check "$n ready after the chaos" wait_for "$n ready" 60 ready "$n"; done
if wait_for "settled" $([ "$STUCK" = 1 ] && echo 10 || echo 120) settled; then
    pass "pipeline settled"
else
    fail "pipeline settled"
    log "open generation jobs (id kind status attempts locked_by lease_until run_after last_error):"
    sql "SELECT id, kind, status, attempts, locked_by, lease_until, run_after, left(coalesce(last_error, ''), 80) FROM jobs WHERE run_id = $GEN_RUN AND status NOT IN ('done', 'dead') ORDER BY id LIMIT 20" | sed 's/^/    /'
    log "open posts (id status claimed_by lease_until not_before attempts last_error):"
    sql "SELECT id, status, claimed_by, lease_until, not_before, attempts, left(coalesce(last_error, ''), 80) FROM posts WHERE status IN ('pending', 'approved', 'posting') ORDER BY id LIMIT 20" | sed 's/^/    /'
fi
sample_rss
check_alive

# ---- what the database says -------------------------------------------------------
read -r n_jobs n_done n_dead n_dead_noerr <<<"$(sql "SELECT count(*), count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status = 'dead'), count(*) FILTER (WHERE status = 'dead' AND coalesce(last_error, '') = '') FROM jobs WHERE run_id = $GEN_RUN AND kind = 'generate.post'" | tr '|' ' ')"
log "generation jobs: $n_jobs ($n_done done, $n_dead dead)"
check "exactly $NPOSTS generation jobs (none lost, none doubled)" test "$n_jobs" -eq "$NPOSTS"
check "every generation job done or dead" test $((n_done + n_dead)) -eq "$n_jobs"
check "every dead generation job has its error" test "$n_dead_noerr" -eq 0
sql "SELECT id, attempts, last_error FROM jobs WHERE run_id = $GEN_RUN AND status = 'dead' LIMIT 5" | sed 's/^/    dead: /'
# A done job wrote its post (one, by its job key), or says why not.
n_nopost=$(sql "SELECT count(*) FROM jobs j WHERE j.run_id = $GEN_RUN AND j.kind = 'generate.post' AND j.status = 'done' AND NOT EXISTS (SELECT 1 FROM posts p WHERE p.metadata->>'job_key' = 'run:' || j.run_id || ':' || (j.payload->>'narrative') || ':' || (j.payload->>'iteration'))")
n_dupskip=$(cat "$T"/gen-*.log | grep -c '"msg":"duplicate post skipped"' || true)
n_audit=$(cat "$T"/gen-*.log | grep -c '"msg":"post refused by audit"' || true)
log "done generation jobs without a post: $n_nopost (generator logs: $n_dupskip duplicate texts skipped, $n_audit refused by the audit act)"
check "every done job without a post was skipped for a logged reason ($n_nopost <= $n_dupskip + $n_audit)" \
    test "$n_nopost" -le $((n_dupskip + n_audit))
check "no post twice for one generation job" sql_eq \
    "SELECT count(*) FROM (SELECT metadata->>'job_key' FROM posts WHERE run_id = $GEN_RUN GROUP BY 1 HAVING count(*) > 1) x" 0

read -r P_ALL P_POSTED P_FAILED P_UNKNOWN P_REJECTED P_OPEN <<<"$(sql "SELECT count(*), count(*) FILTER (WHERE status = 'posted'), count(*) FILTER (WHERE status = 'failed'), count(*) FILTER (WHERE status = 'unknown'), count(*) FILTER (WHERE status = 'rejected'), count(*) FILTER (WHERE status NOT IN ('posted','failed','unknown','rejected')) FROM posts" | tr '|' ' ')"
log "posts: $P_ALL = posted $P_POSTED + failed $P_FAILED + unknown $P_UNKNOWN + rejected $P_REJECTED (+ $P_OPEN open)"
check "no post lost: every post ended posted, failed, unknown or rejected" test "$P_OPEN" -eq 0
check "every failed/unknown post has its reason (last_error)" sql_eq \
    "SELECT count(*) FROM posts WHERE status IN ('failed', 'unknown') AND coalesce(last_error, '') = ''" 0
check "every rejected post has its reason" sql_eq \
    "SELECT count(*) FROM posts WHERE status = 'rejected' AND coalesce(reject_reason, '') = ''" 0
check "posted rows complete (remote_id, posted_at)" sql_eq \
    "SELECT count(*) FROM posts WHERE status = 'posted' AND (coalesce(remote_id, '') = '' OR posted_at IS NULL)" 0
sql "SELECT status, left(coalesce(last_error, reject_reason, ''), 60) AS why, count(*) FROM posts WHERE status <> 'posted' GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 12" | sed 's/^/    /'
check "the posts went through all three worker kinds (>= 90 % of the jobs made a post)" \
    test "$P_ALL" -ge $((NPOSTS * 9 / 10))
check "no job of any service stuck running (> 120 s since its claim)" sql_eq "$STUCK_SQL" 0
sql "SELECT id, kind, locked_by, attempts, attempted_at, lease_until FROM jobs WHERE status = 'running' AND attempted_at < now() - interval '120 seconds' ORDER BY id LIMIT 10" | sed 's/^/    stuck: /'
check "every failed execution has its error message" sql_eq \
    "SELECT count(*) FROM executions WHERE NOT success AND coalesce(error_message, '') = ''" 0
log "executions: $(sql "SELECT string_agg(service || ' ' || ok || ' ok / ' || bad || ' failed', ', ') FROM (SELECT service, count(*) FILTER (WHERE success) ok, count(*) FILTER (WHERE NOT success) bad FROM executions GROUP BY 1 ORDER BY 1) x")"
check "no task fired twice for one due time (task_runs)" sql_eq \
    "SELECT count(*) FROM (SELECT task_id, due_at FROM task_runs WHERE reason <> 'manual' GROUP BY 1, 2 HAVING count(*) > 1) x" 0

# ---- what the fake Discord received -----------------------------------------------
# A message exists for a request the fake answered 200, or delayed past the
# client's timeout (it created the message first) - unless it was a nonce
# replay inside Discord's window (dup), which returns the first message.
jq -s '[.[] | select(.route == "discord" and .reply_id != null and (.status == 200 or .status == 0) and .dup == false)]' \
    "$DREC" >"$T/created.json"
N_REQ=$(jq -s 'length' "$DREC")
N_MSG=$(jq 'length' "$T/created.json")
DUP_NONCE=$(jq '[group_by(.nonce)[] | select(length > 1)] | length' "$T/created.json")
DUP_TEXT=$(jq '[group_by(.body.content)[] | select(length > 1)] | length' "$T/created.json")
N_REPLAY=$(jq -s '[.[] | select(.dup == true)] | length' "$DREC")
FAULTS_D=$(jq -rs '[.[] | select(.action | startswith("random")) | .action] | group_by(.) | map("\(.[0] | sub("random "; ""))=\(length)") | join(" ")' "$DREC")
FAULTS_L=$(jq -rs '[.[] | select(.fault != null) | .fault] | group_by(.) | map("\(.[0])=\(length)") | join(" ")' "$LREC")
N_LLM=$(jq -s 'length' "$LREC")
log "fake Discord: $N_REQ requests, $N_MSG messages, injected: $FAULTS_D; nonce replays $N_REPLAY"
log "fake LLM: $N_LLM requests, injected: $FAULTS_L"
check "0 duplicate messages by nonce" test "$DUP_NONCE" -eq 0
check "0 duplicate messages by content" test "$DUP_TEXT" -eq 0
sql "SELECT coalesce(json_agg(json_build_object('id', id, 'status', status, 'body', body, 'remote_id', remote_id)), '[]') FROM posts" >"$T/posts.json"
# posted rows without their message; messages for no posted/unknown post;
# unknown posts whose message did arrive.
jq -rn --slurpfile m "$T/created.json" --slurpfile p "$T/posts.json" '
    $m[0] as $msgs | $p[0] as $posts |
    ($msgs | map({key: .nonce, value: .}) | from_entries) as $by_nonce |
    ($posts | map({key: "btl-\(.id)", value: .}) | from_entries) as $by_post |
    ([$posts[] | select(.status == "posted") | . as $q | $by_nonce["btl-\(.id)"] |
        select(. == null or .reply_id != $q.remote_id or .body.content != $q.body)] | length) as $a |
    ([$msgs[] | . as $x | $by_post[.nonce] |
        select(. == null or (.status != "posted" and .status != "unknown") or .body != $x.body.content)] | length) as $b |
    ([$posts[] | select(.status == "unknown" and $by_nonce["btl-\(.id)"] != null)] | length) as $c |
    "\($a) \($b) \($c)"' >"$T/consistency.out"
read -r n_posted_nomsg n_msg_stray n_unknown_sent <"$T/consistency.out" || true
check "every posted post: its message at the fake (remote_id, text, nonce btl-<id>)" test "${n_posted_nomsg:-x}" = 0
check "every message belongs to a posted or unknown post (none for failed/rejected ones)" test "${n_msg_stray:-x}" = 0
log "unknown posts whose message did reach the fake: ${n_unknown_sent:-?} of $P_UNKNOWN (the operator's check)"
check "messages at the fake = posted + unknown-but-delivered" test "$N_MSG" -eq $((P_POSTED + ${n_unknown_sent:-0}))

# ---- flood, memory ----------------------------------------------------------------------
check "flood ran and was counted" test "$FLOOD_STATE" = done
RSS_MAX_ALL=0; RSS_LINE=""
for n in $INSTANCES; do
    r=${RSS_MAX[$n]:-0}
    RSS_LINE="$RSS_LINE $n=$((r / 1024))"
    [ "$r" -gt "$RSS_MAX_ALL" ] && RSS_MAX_ALL=$r
done
log "max RSS per instance (MiB):$RSS_LINE"
check "every service's RSS stayed under ${RSS_BOUND_MIB} MiB (max $((RSS_MAX_ALL / 1024)) MiB)" \
    test "$RSS_MAX_ALL" -lt $((RSS_BOUND_MIB * 1024))

for n in $INSTANCES; do
    stop_wait "$n"
    check "$n exits 0 on SIGTERM (got $STOP_STATUS)" test "$STOP_STATUS" = 0
done

# ---- figures (scripts/proof.sh reads these) -----------------------------------------------
figure() { printf 'FIGURE %s %s\n' "$1" "$2" | tee -a "$T/figures"; }
echo "---- figures"
figure mode "$MODE"
figure seed "$SEED"
figure duration_s $(( $(date +%s) - T_START ))
figure generation_jobs "$n_jobs"
figure generation_jobs_dead "$n_dead"
figure generation_no_post "$n_nopost (logged: $n_dupskip duplicate texts, $n_audit audit refusals)"
figure posts "$P_ALL"
figure posted "$P_POSTED"
figure failed "$P_FAILED"
figure unknown "$P_UNKNOWN"
figure rejected "$P_REJECTED"
figure lost "$P_OPEN"
figure duplicates_nonce "$DUP_NONCE"
figure duplicates_content "$DUP_TEXT"
figure discord_requests "$N_REQ"
figure discord_messages "$N_MSG"
figure discord_faults "${FAULTS_D:-none}"
figure llm_requests "$N_LLM"
figure llm_faults "${FAULTS_L:-none}"
figure kills "$KILLS"
figure kills_by_service "$(for k in "${!KILLS_BY[@]}"; do printf '%s=%s ' "$k" "${KILLS_BY[$k]}"; done | xargs)"
figure pg_restarts "$PG_RESTARTS"
figure pg_modes "$(for e in $PG_AT; do printf '%s ' "${e#*:}"; done | xargs)"
figure leader_kills "$(wc -w <<<"$FAILOVERS")"
figure failover_ms "$(xargs <<<"$FAILOVERS")"
figure failover_max_ms "$FAILOVER_MAX_MS"
figure frames_sent "$FLOOD_SENT"
figure frames_rejected "$FLOOD_REJ"
figure control_junk "$FLOOD_CTL_SENT"
figure control_errors "$FLOOD_CTL_ERR"
figure rss_max_mib "$((RSS_MAX_ALL / 1024))"
figure rss_bound_mib "$RSS_BOUND_MIB"
[ -n "${BTL_FAULTS_FIGURES:-}" ] && cp "$T/figures" "$BTL_FAULTS_FIGURES"
finish
