#!/usr/bin/env bash
# Four btl-generator processes drain one queue together. Phase 1: 10,000
# noop jobs from one real fire (fanout) all end done, each run exactly once,
# and every completion is reported exactly once in executions. Phase 2: 2,000
# sleep jobs, one worker SIGKILLed while it holds leases: the scheduler
# rescues the expired leases, the survivors finish them (attempts = 2), no
# job is lost or dead, and nothing is counted twice.
source "$(dirname "$0")/lib.sh"
btl_setup
export T

NOOP_JOBS=10000
SLEEP_JOBS=2000
WORKERS="gen-1 gen-2 gen-3 gen-4"
VICTIM=gen-2

write_config "$T/btl.yaml" <<'EOF2'
scheduler: { check_interval: 200ms, failover: 2s }
worker: { concurrency: 2, lease: 2s, poll_fallback: 200ms, batch_size: 16 }
tasks:
  drain:
    service: generator
    schedule: "once 2099-01-01T00:00:00Z"
    job: noop
    fanout: 10000
  sleepy:
    service: generator
    schedule: "once 2099-01-01T00:00:00Z"
    job: "sleep 20"
    fanout: 2000
EOF2

start scheduler btl-scheduler --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_SCHED" --instance sched-a
check "scheduler ready" wait_for "scheduler ready" 30 http_ok "$HTTP_SCHED" /health/ready
i=0
for w in $WORKERS; do
    i=$((i + 1))
    port=$(free_port)
    eval "HTTP_${w//-/_}=$port"
    start "$w" btl-generator --config "$T/btl.yaml" --http "127.0.0.1:$port" --instance "$w"
done
for w in $WORKERS; do
    v="HTTP_${w//-/_}"
    check "$w live" wait_for "$w live" 30 http_ok "${!v}" /health/live
    # Readiness is asserted by test_garbage; here it only delays the start
    # (a worker that missed its bus-connect event stays unready: see report).
    wait_for "$w ready" 10 http_ok "${!v}" /health/ready ||
        log "WARN: $w not ready: $(curl -sS --max-time 2 "http://127.0.0.1:${!v}/health/ready" 2>&1)"
done
check "scheduler leads" wait_for "leader" 15 bash -c "nngcat --req --dial $CONTROL_URL --data ping --ascii --recv-timeout 2 | grep -q '\"leader\":true'"

trigger() {
    local reply
    reply=$(control "trigger $1")
    log "trigger $1: $reply" >&2
    sed -n 's/.*"run_id":\([0-9]*\).*/\1/p' <<<"$reply"
}

# Reports arrive after the jobs are done: wait until the per-instance sums
# match, then check nothing more arrives (a double count would show then).
reports_match() { # run_id instance...
    local run=$1; shift
    local w
    for w in "$@"; do
        [ "$(sql "SELECT coalesce(sum(items_ok),0) FROM executions WHERE run_id = $run AND instance = '$w'")" = \
          "$(sql "SELECT count(*) FROM jobs WHERE run_id = $run AND status = 'done' AND locked_by = '$w'")" ] || return 1
    done
}

# ---- phase 1: 10,000 noop jobs, nobody killed ---------------------------
t0=$(date +%s)
run1=$(trigger drain)
check "phase 1: trigger returns a run id" test -n "$run1"
run1=${run1:-0}
check "phase 1: fire enqueued $NOOP_JOBS jobs" sql_eq "SELECT count(*) FROM jobs WHERE run_id = $run1" "$NOOP_JOBS"
check "phase 1: all $NOOP_JOBS jobs done" wait_for "noop drain" 150 \
    sql_eq "SELECT count(*) FROM jobs WHERE run_id = $run1 AND status = 'done'" "$NOOP_JOBS"
log "phase 1 drained in $(( $(date +%s) - t0 )) s"
check "phase 1: every job ran exactly once (attempts = 1)" \
    sql_eq "SELECT count(*) FROM jobs WHERE run_id = $run1 AND attempts <> 1" 0
check "phase 1: none dead/queued/running/failed" \
    sql_eq "SELECT count(*) FROM jobs WHERE run_id = $run1 AND status <> 'done'" 0
check "phase 1: the work was shared (>= 2 workers completed jobs)" \
    sql_ge "SELECT count(DISTINCT locked_by) FROM jobs WHERE run_id = $run1" 2
check "phase 1: exec.result counts reach $NOOP_JOBS" wait_for "phase 1 reports" 30 \
    sql_ge "SELECT coalesce(sum(items_ok),0) FROM executions WHERE run_id = $run1" "$NOOP_JOBS"
# Every worker is idle now; two fallback polls later no late report may
# have added to the count.
wait_for "settle" 1 false || true
check "phase 1: sum(items_ok) == $NOOP_JOBS (each completion counted once)" \
    sql_eq "SELECT coalesce(sum(items_ok),0) FROM executions WHERE run_id = $run1" "$NOOP_JOBS"
# shellcheck disable=SC2086
check "phase 1: each worker reported exactly the jobs it completed" reports_match "$run1" $WORKERS
check "phase 1: no failed or skipped items" \
    sql_eq "SELECT coalesce(sum(items_failed + items_skipped),0) || ' ' || count(*) FILTER (WHERE NOT success) FROM executions WHERE run_id = $run1" "0 0"

# ---- phase 2: sleep jobs, one worker SIGKILLed mid-drain ----------------
t0=$(date +%s)
run2=$(trigger sleepy)
check "phase 2: trigger returns a run id" test -n "$run2"
run2=${run2:-0}
check "phase 2: $VICTIM holds running jobs" wait_for "victim busy" 30 \
    sql_ge "SELECT count(*) FROM jobs WHERE run_id = $run2 AND status = 'running' AND locked_by = '$VICTIM'" 1
# Let the drain get going so the kill lands midway, not at the start.
wait_for "some progress" 30 sql_ge "SELECT count(*) FROM jobs WHERE run_id = $run2 AND status = 'done'" 200 || true
wait_for "victim busy again" 30 \
    sql_ge "SELECT count(*) FROM jobs WHERE run_id = $run2 AND status = 'running' AND locked_by = '$VICTIM'" 1 || true
vpid=$(pid_of "$VICTIM")
kill -KILL "$vpid"
wait "$vpid" 2>/dev/null || true
# Dead process: what it held now stays put until its leases expire.
sql "CREATE TABLE it_orphans AS SELECT id FROM jobs WHERE run_id = $run2 AND status = 'running' AND locked_by = '$VICTIM'"
norph=$(sql "SELECT count(*) FROM it_orphans")
vdone=$(sql "SELECT count(*) FROM jobs WHERE run_id = $run2 AND status = 'done' AND locked_by = '$VICTIM'")
log "killed $VICTIM holding $norph leased jobs (it had completed $vdone)"
check "phase 2: the victim held leased jobs when killed" test "$norph" -gt 0
check "phase 2: the kill landed mid-drain (jobs still queued)" \
    sql_ge "SELECT count(*) FROM jobs WHERE run_id = $run2 AND status = 'queued'" 1
check "phase 2: all $SLEEP_JOBS jobs done" wait_for "sleep drain" 150 \
    sql_eq "SELECT count(*) FROM jobs WHERE run_id = $run2 AND status = 'done'" "$SLEEP_JOBS"
log "phase 2 drained in $(( $(date +%s) - t0 )) s"
check "phase 2: none lost (count == $SLEEP_JOBS) and none dead/queued/running" \
    sql_eq "SELECT count(*) || ' ' || count(*) FILTER (WHERE status <> 'done') FROM jobs WHERE run_id = $run2" "$SLEEP_JOBS 0"
check "phase 2: rescued jobs show attempts = 2" \
    sql_eq "SELECT count(*) FROM jobs j JOIN it_orphans o USING (id) WHERE j.attempts = 2" "$norph"
check "phase 2: rescued jobs were finished by the survivors" \
    sql_eq "SELECT count(*) FROM jobs j JOIN it_orphans o USING (id) WHERE j.locked_by = '$VICTIM'" 0
check "phase 2: rescue is recorded on the rescued jobs" \
    sql_eq "SELECT count(*) FROM jobs j JOIN it_orphans o USING (id) WHERE j.last_error LIKE 'lease expired (worker $VICTIM)%'" "$norph"
check "phase 2: every other job ran once (attempts = 1)" \
    sql_eq "SELECT count(*) FROM jobs WHERE run_id = $run2 AND attempts <> 1 AND id NOT IN (SELECT id FROM it_orphans)" 0
SURVIVORS=${WORKERS/$VICTIM/}
# shellcheck disable=SC2086
check "phase 2: each survivor reported exactly the jobs it completed" \
    wait_for "phase 2 reports" 30 reports_match "$run2" $SURVIVORS
wait_for "settle" 1 false || true
# shellcheck disable=SC2086
check "phase 2: still exact after settling (no double count)" reports_match "$run2" $SURVIVORS
# The victim's last drain cycle may have completed jobs whose exec.result
# it never sent: its count can only fall short, never exceed.
vrep=$(sql "SELECT coalesce(sum(items_ok),0) FROM executions WHERE run_id = $run2 AND instance = '$VICTIM'")
total=$(sql "SELECT coalesce(sum(items_ok),0) FROM executions WHERE run_id = $run2")
log "sum(items_ok) = $total of $SLEEP_JOBS; victim reported $vrep of the $vdone it completed"
check "phase 2: victim reported no more than it completed" test "$vrep" -le "$vdone"
check "phase 2: sum(items_ok) == $SLEEP_JOBS minus the victim's unreported completions" \
    test "$total" -eq $(( SLEEP_JOBS - (vdone - vrep) ))
check "phase 2: no failed items reported" \
    sql_eq "SELECT coalesce(sum(items_failed),0) FROM executions WHERE run_id = $run2" 0

for s in scheduler $SURVIVORS; do
    stop_wait "$s"
    check "$s exits 0 on SIGTERM (got $STOP_STATUS)" test "$STOP_STATUS" = 0
done
finish
