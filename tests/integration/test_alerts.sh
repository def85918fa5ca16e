#!/usr/bin/env bash
# Webhook alerts (alerts.webhook_url) against the fake Discord webhook:
# a circuit opening (after one 503, retried), a task paused by an
# unrecoverable error, a post ending `unknown`, a circuit closing after a
# successful trial (config reload), a dead webhook (retried, given up,
# counted) while scheduling goes on, and the burst cap.
source "$(dirname "$0")/lib.sh"
btl_setup

WH_PORT=$(free_port)
export WH_PORT T
HOOKS="$T/hooks.jsonl"
: >"$T/hook.script"

cfg() { # cfg FLAKY_JOB
    write_config "$T/btl.yaml" <<EOF2
scheduler: { check_interval: 200ms, max_consecutive_failures: 2, circuit_reset: 3s, failover: 2s }
worker: { concurrency: 2, lease: 10s, poll_fallback: 500ms, batch_size: 8 }
alerts: { webhook_url: "http://127.0.0.1:\${WH_PORT}/webhooks/4242/hooktoken" }
tasks:
  flaky:
    service: curator
    schedule: "once 2099-01-01T00:00:00Z"
    job: "$1"
    execution: { max_retries: 0 }
  flaky2:
    service: curator
    schedule: "once 2099-01-01T00:00:00Z"
    job: "fail still broken"
    execution: { max_retries: 0 }
  broken:
    service: curator
    schedule: "once 2099-01-01T00:00:00Z"
    job: "fail unrecoverable: 401 from provider"
    execution: { max_retries: 0, stop_on_unrecoverable: true }
  ticking:
    service: curator
    schedule: "every 1s"
    job: noop
EOF2
}
cfg "fail upstream said no"

# hooks_with PATTERN...: number of delivered (2xx) webhook requests whose
# line matches every pattern.
hooks_with() {
    local f=$HOOKS
    [ -f "$f" ] || { echo 0; return; }
    local lines; lines=$(grep '"status": *20[04]' "$f" || true)
    for p in "$@"; do lines=$(grep -F -- "$p" <<<"$lines" || true); done
    if [ -z "$lines" ]; then echo 0; else wc -l <<<"$lines"; fi
}
hooks_ge() { local n=$1; shift; [ "$(hooks_with "$@")" -ge "$n" ]; }
# sample PORT 'name{labels}': one exact sample's value (0 when absent).
sample() {
    curl -fsS --max-time 5 "http://127.0.0.1:$1/metrics" |
        awk -v m="$2" '$1 == m { v = $2 } END { printf "%d\n", v + 0 }'
}
sample_ge() { [ "$(sample "$1" "$2")" -ge "$3" ]; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ticks() { sql "SELECT count(*) FROM executions WHERE task_id = 'ticking' AND success"; }

start webhook fake_discord --port "$WH_PORT" --record "$HOOKS" --script "$T/hook.script"
check "fake webhook listening" wait_for "webhook" 10 port_open "$WH_PORT"
echo 503 >"$T/hook.script" # the first alert is refused once, then retried

start scheduler btl-scheduler --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_SCHED" --instance sched-a
start curator btl-curator --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_CUR" --instance cur-a
for p in $HTTP_SCHED $HTTP_CUR; do
    check "ready on :$p" wait_for "ready :$p" 30 http_ok "$p" /health/ready
done
check "alert metrics registered" bash -c "curl -fsS http://127.0.0.1:$HTTP_SCHED/metrics | grep -q '^# TYPE btl_alerts_sent_total counter'"
check "ticking task runs" wait_for "ticking" 20 sql_ge "SELECT count(*) FROM executions WHERE task_id = 'ticking' AND success" 1

# 1. circuit opens -> one alert naming the task, delivered after a 503.
for i in 1 2; do
    control 'trigger flaky' >/dev/null
    wait_for "flaky failure $i" 20 sql_ge "SELECT count(*) FROM executions WHERE task_id = 'flaky' AND NOT success" "$i" || true
done
check "circuit open in the database" wait_for "open" 10 \
    sql_eq "SELECT circuit_state FROM tasks WHERE task_id = 'flaky'" open
check "circuit-open alert delivered with the task name" wait_for "open alert" 20 \
    hooks_ge 1 'circuit OPEN' '\"flaky\"' 'after 2 consecutive failures'
check "the 503 was retried (first try refused)" grep -q '"status": *503' "$HOOKS"
check "Slack-compatible text field too" bash -c "grep 'circuit OPEN' '$HOOKS' | grep -q '\"text\": *\"\\[botticelli\\]'"
check "webhook route (not bot API)" bash -c "grep 'circuit OPEN' '$HOOKS' | grep -q '\"route\": *\"webhook\"'"
check "metric: sent ok" wait_for "sent metric" 10 sample_ge "$HTTP_SCHED" 'btl_alerts_sent_total{kind="circuit_open",result="ok"}' 1

# 2. unrecoverable error pauses the task -> task_paused alert.
control 'trigger broken' >/dev/null
check "task paused alert" wait_for "paused alert" 20 hooks_ge 1 'task PAUSED' '\"broken\"' '401 from provider'

# 3. a posting lease runs out -> post_unknown alert with the post id.
pid=$(sql "INSERT INTO posts (content_hash, body, status, platform, claimed_by, lease_until) VALUES ('h-unknown-1', 'hello', 'posting', 'discord', 'gone-poster', now() - interval '1 minute') RETURNING id")
check "post marked unknown" wait_for "unknown" 20 sql_eq "SELECT status FROM posts WHERE id = $pid" unknown
check "post-unknown alert names the post" wait_for "unknown alert" 20 hooks_ge 1 'post outcome UNKNOWN' "post $pid (platform discord)"

# 4. the task is fixed (reload) -> the half-open trial succeeds -> closed alert.
cfg noop
kill -HUP "$(pid_of scheduler)"
check "circuit closes after the trial" wait_for "closed" 30 \
    sql_eq "SELECT circuit_state || ' ' || is_paused FROM tasks WHERE task_id = 'flaky'" "closed false"
check "circuit-closed alert" wait_for "closed alert" 20 hooks_ge 1 'circuit closed' '\"flaky\"'
check "exactly one open alert for flaky" test "$(hooks_with 'circuit OPEN' '\"flaky\"')" -eq 1

# 5. webhook down: retries, gives up, counts; scheduling goes on meanwhile.
kill -TERM "$(pid_of webhook)"
wait "$(pid_of webhook)" 2>/dev/null || true
check "webhook gone" bash -c "! (exec 3<>/dev/tcp/127.0.0.1/$WH_PORT) 2>/dev/null"
before=$(ticks)
for i in 1 2; do
    control 'trigger flaky2' >/dev/null
    wait_for "flaky2 failure $i" 20 sql_ge "SELECT count(*) FROM executions WHERE task_id = 'flaky2' AND NOT success" "$i" || true
done
check "flaky2 circuit open" wait_for "open2" 10 sql_eq "SELECT circuit_state FROM tasks WHERE task_id = 'flaky2'" open
t0=$(date +%s%N)
check "control answers while the webhook is down" bash -c "nngcat --req --dial $CONTROL_URL --data ping --ascii --recv-timeout 2 | grep -q '\"ok\":true'"
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
check "control answered within 1 s (${ms} ms)" test "$ms" -lt 1000
check "alert given up after retries (failed counted)" wait_for "failed metric" 30 \
    sample_ge "$HTTP_SCHED" 'btl_alerts_sent_total{kind="circuit_open",result="failed"}' 1
check "ticking kept firing meanwhile" wait_for "ticks" 10 sql_ge "SELECT count(*) FROM executions WHERE task_id = 'ticking' AND success" $((before + 3))
check "scheduler still ready" http_ok "$HTTP_SCHED" /health/ready
check "failure logged without the secret URL" bash -c "grep -q 'alert webhook failed' '$T/scheduler.log' && ! grep -q hooktoken '$T/scheduler.log'"

# 6. burst cap: 20 posts go unknown at once; at most ALERTS_BURST (10) a
# minute go out, the rest are counted as rate limited.
start webhook2 fake_discord --port "$WH_PORT" --record "$HOOKS" --script "$T/hook.script"
check "fake webhook back" wait_for "webhook2" 10 port_open "$WH_PORT"
sql "INSERT INTO posts (content_hash, body, status, platform, lease_until) SELECT 'burst-' || g, 'b', 'posting', 'file', now() - interval '1 minute' FROM generate_series(1, 20) g" >/dev/null
check "20 posts unknown" wait_for "burst unknown" 20 sql_eq "SELECT count(*) FROM posts WHERE content_hash LIKE 'burst-%' AND status = 'unknown'" 20
check "rate-limited alerts counted" wait_for "rate limited" 20 \
    sample_ge "$HTTP_SCHED" 'btl_alerts_dropped_total{kind="post_unknown",reason="rate_limited"}' 5
sleep_until_quiet() { local a b; a=$(hooks_with 'platform file'); sleep 1; b=$(hooks_with 'platform file'); [ "$a" = "$b" ]; }
wait_for "alerts settle" 20 sleep_until_quiet || true
n=$(hooks_with 'platform file')
check "burst: between 1 and 11 of the 20 delivered (got $n)" bash -c "[ $n -ge 1 ] && [ $n -le 11 ]"
check "every alert within Discord's 2000 characters" python3 -c '
import json, sys
sys.exit(0 if all(json.loads(l)["chars"] <= 2000 for l in open(sys.argv[1]) if l.strip()) else 1)' "$HOOKS"

for s in scheduler curator; do
    stop_wait "$s"
    check "$s exits 0 on SIGTERM within 10 s (got $STOP_STATUS)" test "$STOP_STATUS" = 0
done
finish
