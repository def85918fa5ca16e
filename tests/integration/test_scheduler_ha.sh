#!/usr/bin/env bash
# Scheduler restarts and failover, against real processes and Postgres:
# (a) a SIGTERM + restart right after a fire neither double-fires nor
#     shifts the schedule (the persisted next_run is kept); after an outage
#     catchup: one fires exactly one catch-up run and catchup: none fires
#     none; (b) with two schedulers exactly one leads, and when the leader
#     is SIGKILLed the standby takes over within the failover and keeps
#     firing (task_runs.fired_by names it).
source "$(dirname "$0")/lib.sh"
btl_setup
export T

write_config "$T/btl.yaml" <<'EOF2'
scheduler: { check_interval: 200ms, failover: 2s }
tasks:
  tick5:
    service: generator
    schedule: "every 5s"
    job: noop
  catch_one:
    service: curator
    schedule: "every 2s"
    catchup: one
    job: noop
  catch_none:
    service: curator
    schedule: "every 2s"
    catchup: none
    job: noop
  hb:
    service: poster
    schedule: "every 1s"
    job: noop
EOF2

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
runs() { sql "SELECT count(*) FROM task_runs WHERE task_id = '$1' AND reason <> 'manual'"; }
ping_url() { nngcat --req --dial "$1" --data ping --ascii --recv-timeout 3 2>/dev/null; }
is_leader() { ping_url "$1" | grep -q '"leader":true'; }
is_standby() { ping_url "$1" | grep -q '"leader":false'; }
# SQL timestamp literal for a unix-ms value.
ts() { echo "to_timestamp($1 / 1000.0)"; }

start_sched() { # NAME HTTP_PORT
    start "$1" btl-scheduler --config "$T/btl.yaml" --http "127.0.0.1:$2" --instance "$1"
    check "$1 ready" wait_for "$1 ready" 30 http_ok "$2" /health/ready
}

# ---- (a) restart right after a fire ------------------------------------
start_sched sched-a "$HTTP_SCHED"
check "sched-a leads" wait_for "sched-a leader" 15 is_leader "$CONTROL_URL"
check "tick5 fires" wait_for "first tick5" 15 sql_ge "SELECT count(*) FROM task_runs WHERE task_id = 'tick5'" 1
n=$(runs tick5)
check "tick5 fires again" wait_for "tick5 fire" 15 sql_ge "SELECT count(*) FROM task_runs WHERE task_id = 'tick5'" $((n + 1))
stop_wait sched-a
check "sched-a exits 0 on SIGTERM right after a fire (got $STOP_STATUS)" test "$STOP_STATUS" = 0
before=$(runs tick5)
planned=$(sql "SELECT (extract(epoch FROM next_due) * 1000)::bigint FROM tasks WHERE task_id = 'tick5'")
restart_ms=$(now_ms)
log "tick5: $before runs, next due at $planned (in $((planned - restart_ms)) ms)"
check "restart happens within the interval" test "$planned" -gt "$restart_ms"
start_sched sched-a "$HTTP_SCHED"
check "sched-a leads again" wait_for "sched-a leader" 15 is_leader "$CONTROL_URL"
check "two more tick5 fires after the restart" wait_for "tick5 after restart" 20 \
    sql_ge "SELECT count(*) FROM task_runs WHERE task_id = 'tick5'" $((before + 2))
check "no two tick5 runs share a due time" \
    sql_eq "SELECT count(*) - count(DISTINCT due_at) FROM task_runs WHERE task_id = 'tick5'" 0
check "no extra fire at restart: first new run is the persisted next_due" \
    sql_eq "SELECT (extract(epoch FROM min(due_at)) * 1000)::bigint FROM task_runs WHERE task_id = 'tick5' AND run_id > (SELECT max(run_id) FROM task_runs WHERE fired_at < $(ts "$restart_ms") AND task_id = 'tick5')" "$planned"
check "no run fired before its due time" \
    sql_eq "SELECT count(*) FROM task_runs WHERE task_id = 'tick5' AND fired_at < due_at" 0
check "due times are exactly 5 s apart across the restart (runs match the schedule)" \
    sql_eq "SELECT count(*) FROM (SELECT due_at - lag(due_at) OVER (ORDER BY due_at) AS d FROM task_runs WHERE task_id = 'tick5') x WHERE d IS NOT NULL AND d <> interval '5 seconds'" 0
check "tick5 reasons are all scheduled" \
    sql_eq "SELECT count(*) FROM task_runs WHERE task_id = 'tick5' AND reason <> 'scheduled'" 0

# ---- catch-up after a short outage (8 s, four missed 2 s fires) --------
stop_wait sched-a
check "sched-a exits 0 (got $STOP_STATUS)" test "$STOP_STATUS" = 0
down_ms=$(now_ms)
wait_for "outage" 8 false || true
up_ms=$(now_ms)
start_sched sched-a "$HTTP_SCHED"
check "both 2 s tasks fire again after the outage" wait_for "fires after outage" 15 bash -c \
    "[ \$(psql '$DATABASE_URL' -Atc \"SELECT count(DISTINCT task_id) FROM task_runs WHERE task_id LIKE 'catch_%' AND due_at > $(ts "$up_ms")\") = 2 ]"
# Several 2 s fires were missed: catchup: one runs exactly one catch-up run
# for the whole outage (no burst); catchup: none runs none of them.
check "catch_one: exactly one run for the whole 8 s outage (no burst)" \
    sql_eq "SELECT count(*) FROM task_runs WHERE task_id = 'catch_one' AND fired_at >= $(ts "$up_ms") AND due_at < $(ts "$up_ms")" 1
check "catch_one: that run is a catch-up" \
    sql_eq "SELECT reason FROM task_runs WHERE task_id = 'catch_one' AND fired_at >= $(ts "$up_ms") AND due_at < $(ts "$up_ms")" catchup
check "catch_none: no run for the missed fires" \
    sql_eq "SELECT count(*) FROM task_runs WHERE task_id = 'catch_none' AND fired_at >= $(ts "$up_ms") AND due_at < $(ts "$up_ms")" 0
for t in catch_one catch_none; do
    check "$t: no run during the outage" \
        sql_eq "SELECT count(*) FROM task_runs WHERE task_id = '$t' AND fired_at > $(ts "$down_ms") AND fired_at < $(ts "$up_ms")" 0
done

# ---- catch-up after a long outage --------------------------------------
# A real outage past the 60 s grace would cost minutes; moving the persisted
# plan 10 minutes into the past is the same state for the scheduler.
stop_wait sched-a
check "sched-a exits 0 (got $STOP_STATUS)" test "$STOP_STATUS" = 0
sql "UPDATE tasks SET next_run = next_run - interval '10 minutes', next_due = next_due - interval '10 minutes' WHERE task_id LIKE 'catch_%'"
up_ms=$(now_ms)
start_sched sched-a "$HTTP_SCHED"
check "both tasks resume their schedule" wait_for "scheduled after long outage" 15 bash -c \
    "[ \$(psql '$DATABASE_URL' -Atc \"SELECT count(DISTINCT task_id) FROM task_runs WHERE task_id LIKE 'catch_%' AND reason = 'scheduled' AND due_at > $(ts "$up_ms")\") = 2 ]"
check "catchup: one -> exactly one catch-up run" \
    sql_eq "SELECT count(*) FROM task_runs WHERE task_id = 'catch_one' AND reason = 'catchup' AND fired_at >= $(ts "$up_ms")" 1
check "catchup: one -> the catch-up run is the only one for the missed period" \
    sql_eq "SELECT count(*) FROM task_runs WHERE task_id = 'catch_one' AND fired_at >= $(ts "$up_ms") AND due_at < $(ts "$up_ms")" 1
check "catchup: none -> no catch-up run" \
    sql_eq "SELECT count(*) FROM task_runs WHERE task_id = 'catch_none' AND (reason = 'catchup' OR (fired_at >= $(ts "$up_ms") AND due_at < $(ts "$up_ms")))" 0

# ---- (b) standby takeover ----------------------------------------------
B_PUB=$(free_port); B_COLLECT=$(free_port); B_CONTROL=$(free_port); B_HTTP=$(free_port)
B_URL="tcp://127.0.0.1:$B_CONTROL"
PUB_PORT=$B_PUB COLLECT_PORT=$B_COLLECT CONTROL_PORT=$B_CONTROL start_sched sched-b "$B_HTTP"
check "sched-b answers ping as standby" wait_for "sched-b standby" 15 is_standby "$B_URL"
check "sched-a still leads" is_leader "$CONTROL_URL"
check "metrics: is_leader 1 on sched-a" test "$(metric "$HTTP_SCHED" btl_scheduler_is_leader)" = 1
check "metrics: is_leader 0 on sched-b" wait_for "b metric" 5 \
    bash -c "curl -fsS http://127.0.0.1:$B_HTTP/metrics | grep -q '^btl_scheduler_is_leader 0'"
check "standby fires nothing" \
    sql_eq "SELECT count(*) FROM task_runs WHERE fired_by = 'sched-b'" 0
apid=$(pid_of sched-a)
kill -KILL "$apid"
wait "$apid" 2>/dev/null || true
kill_ms=$(now_ms)
if wait_for "sched-b takes over" 10 is_leader "$B_URL"; then
    pass "standby leads $(( $(now_ms) - kill_ms )) ms after the leader was SIGKILLed (failover 2 s, bound 10 s)"
else
    fail "standby did not take over within 10 s"
fi
check "sched-b keeps firing (fired_by = sched-b)" wait_for "b fires" 10 \
    sql_ge "SELECT count(*) FROM task_runs WHERE task_id = 'hb' AND fired_by = 'sched-b' AND fired_at > $(ts "$kill_ms")" 2
check "metrics: is_leader 1 on sched-b" wait_for "b metric 1" 5 \
    bash -c "curl -fsS http://127.0.0.1:$B_HTTP/metrics | grep -q '^btl_scheduler_is_leader 1'"
check "no due time fired twice across the takeover" \
    sql_eq "SELECT count(*) FROM (SELECT task_id, due_at FROM task_runs WHERE reason <> 'manual' GROUP BY 1, 2 HAVING count(*) > 1) x" 0
gap=$(sql "SELECT coalesce(max(d), 0) FROM (SELECT extract(epoch FROM due_at - lag(due_at) OVER (ORDER BY due_at)) AS d FROM task_runs WHERE task_id = 'hb' AND due_at > $(ts "$((kill_ms - 5000))")) x")
log "largest hb due gap around the takeover: ${gap}s"
# The restarted old leader must come back as a standby.
start_sched sched-a "$HTTP_SCHED"
check "restarted sched-a is a standby" wait_for "a standby" 15 is_standby "$CONTROL_URL"
check "sched-b still leads" is_leader "$B_URL"

for s in sched-a sched-b; do
    stop_wait "$s"
    check "$s exits 0 on SIGTERM (got $STOP_STATUS)" test "$STOP_STATUS" = 0
done
finish
