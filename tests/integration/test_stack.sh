#!/usr/bin/env bash
# The whole stack as processes: an nngcat trigger becomes an executions row,
# `btl history` shows it, health and metrics answer, the circuit breaker and
# the unrecoverable-error stop pause their tasks, and SIGTERM stops every
# service with exit 0 within 10 s.
source "$(dirname "$0")/lib.sh"
btl_setup

write_config "$T/btl.yaml" <<'EOF2'
scheduler: { check_interval: 200ms, max_consecutive_failures: 3, circuit_reset: 2s, failover: 2s }
worker: { concurrency: 2, lease: 10s, poll_fallback: 500ms, batch_size: 8 }
platforms:
  file: { path: "${T}/posts.log" }
tasks:
  noop_task:
    service: generator
    schedule: "once 2099-01-01T00:00:00Z"
    job: noop
    fanout: 3
  flaky:
    service: curator
    schedule: "once 2099-01-01T00:00:00Z"
    job: "fail upstream said no"
    execution: { max_retries: 0 }
  broken:
    service: poster
    schedule: "once 2099-01-01T00:00:00Z"
    platform: file
    job: "fail unrecoverable: 401 from provider"
    execution: { max_retries: 0, stop_on_unrecoverable: true }
  ticking:
    service: generator
    schedule: "every 1s"
    job: noop
EOF2
export T

start scheduler btl-scheduler --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_SCHED" --instance sched-a
start generator btl-generator --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_GEN" --instance gen-a
start curator btl-curator --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_CUR" --instance cur-a
start poster btl-poster --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_POST" --instance post-a

for p in $HTTP_SCHED $HTTP_GEN $HTTP_CUR $HTTP_POST; do
    check "ready on :$p" wait_for "ready :$p" 30 http_ok "$p" /health/ready
done
check "control ping" wait_for "ping" 10 bash -c "nngcat --req --dial $CONTROL_URL --data ping --ascii --recv-timeout 2 | grep -q '\"ok\":true'"

reply=$(control 'trigger noop_task')
log "trigger reply: $reply"
check "trigger replies ok" grep -q '"ok":true' <<<"$reply"
run_id=$(sed -n 's/.*"run_id":\([0-9]*\).*/\1/p' <<<"$reply")
check "trigger returns a run id" test -n "$run_id"
check "executions row for the manual run" wait_for "execution" 20 \
    sql_ge "SELECT coalesce(sum(items_ok),0) FROM executions WHERE run_id = ${run_id:-0} AND success" 3
check "jobs of the run all done" sql_eq "SELECT count(*) FROM jobs WHERE run_id = ${run_id:-0} AND status = 'done'" 3
check "trigger recorded as manual" sql_eq "SELECT trigger FROM executions WHERE run_id = ${run_id:-0} LIMIT 1" manual
check "btl history shows it" bash -c "'$BTL_BUILD/btl' history noop_task | grep -q manual"

check "interval task fires by itself" wait_for "ticking runs" 20 \
    sql_ge "SELECT count(*) FROM executions WHERE task_id = 'ticking' AND success" 2

for i in 1 2 3; do
    control 'trigger flaky' >/dev/null
    wait_for "flaky failure $i" 20 sql_ge "SELECT count(*) FROM executions WHERE task_id = 'flaky' AND NOT success" "$i" || true
done
check "circuit opens after 3 failures" wait_for "circuit open" 10 \
    sql_eq "SELECT circuit_state || ' ' || is_paused FROM tasks WHERE task_id = 'flaky'" "open true"
check "paused reason names the circuit" bash -c "psql '$DATABASE_URL' -Atc \"SELECT paused_reason FROM tasks WHERE task_id='flaky'\" | grep -q 'circuit open after 3'"
check "half-open trial runs after circuit_reset and fails again" wait_for "trial" 20 \
    sql_ge "SELECT count(*) FROM executions WHERE task_id = 'flaky' AND NOT success" 4
check "circuit open again after failed trial" wait_for "reopen" 10 \
    sql_eq "SELECT circuit_state FROM tasks WHERE task_id = 'flaky'" open

control 'trigger broken' >/dev/null
check "unrecoverable error pauses at once" wait_for "broken paused" 20 \
    sql_eq "SELECT is_paused FROM tasks WHERE task_id = 'broken'" t
check "unrecoverable reason" bash -c "psql '$DATABASE_URL' -Atc \"SELECT paused_reason FROM tasks WHERE task_id='broken'\" | grep -q 'unrecoverable'"

check "pause via control" bash -c "nngcat --req --dial $CONTROL_URL --data 'pause ticking' --ascii --recv-timeout 5 | grep -q '\"paused\":true'"
check "pause recorded" sql_eq "SELECT is_paused FROM tasks WHERE task_id = 'ticking'" t
check "resume via btl" "$BTL_BUILD/btl" resume ticking
check "resume recorded" sql_eq "SELECT is_paused FROM tasks WHERE task_id = 'ticking'" f
check "unknown task is an error" bash -c "! '$BTL_BUILD/btl' trigger nosuchtask"
check "garbage command gets an error reply" bash -c "nngcat --req --dial $CONTROL_URL --data 'frobnicate' --ascii --recv-timeout 5 | grep -q '\"ok\":false'"

# A reload on the control socket reaches the workers too (tick reason reload).
check "reload via control" bash -c "nngcat --req --dial $CONTROL_URL --data reload --ascii --recv-timeout 5 | grep -q '\"ok\":true'"
for s in scheduler generator curator poster; do
    check "$s reloaded its configuration" wait_for "$s reload" 20 grep -q '"msg":"configuration reloaded' "$T/$s.log"
done
check "workers keep working after the reload" wait_for "ticking after reload" 20 \
    sql_ge "SELECT count(*) FROM executions WHERE task_id = 'ticking' AND success AND started_at > now() - interval '5 seconds'" 1

metrics=$(curl -fsS "http://127.0.0.1:$HTTP_SCHED/metrics")
check "metrics: executions_total" grep -q '^btl_executions_total{task="noop_task",status="success"}' <<<"$metrics"
check "metrics: circuit trips" grep -q '^btl_circuit_breaker_trips_total{task="flaky"}' <<<"$metrics"
check "metrics: worker jobs" bash -c "curl -fsS http://127.0.0.1:$HTTP_GEN/metrics | grep -q '^btl_jobs_processed_total'"

for s in scheduler generator curator poster; do
    stop_wait "$s"
    check "$s exits 0 on SIGTERM within 10 s (got $STOP_STATUS)" test "$STOP_STATUS" = 0
done
finish
