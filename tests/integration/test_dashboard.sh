#!/usr/bin/env bash
# The web dashboard in a real browser: the scheduler serves the page at /,
# headless Debian chromium driven by playwright-core loads it, sees the
# configured tasks, is refused a pause without a token and with a readonly
# one (visibly: 401, 403), then with an operator token pauses a task (checked
# in the database), triggers one, approves a pending post and rejects another
# with a reason typed into the prompt. A screenshot
# lands in $BTL_BUILD/artifacts/dashboard.png.
source "$(dirname "$0")/lib.sh"

# Missing tools fail the test (make test installs them): a skipped browser
# test would look green while proving nothing.
for tool in node npm; do
    command -v "$tool" >/dev/null || { echo "FAIL: '$tool' not found (scripts/deps.sh installs nodejs/npm)"; exit 1; }
done
[ -x /usr/bin/chromium ] || { echo "FAIL: /usr/bin/chromium not found (scripts/deps.sh installs chromium)"; exit 1; }

btl_setup

# playwright-core from the checked-in lockfile, into the build dir (never the
# source tree); reinstalled only when the lockfile changed. flock: parallel
# runs against one build dir share it.
NODE_DIR="$BTL_BUILD/node-dashboard"
mkdir -p "$NODE_DIR" "$BTL_BUILD/artifacts"
install_playwright() {
    cd "$NODE_DIR"
    if cmp -s "$BTL_SRC/tests/integration/package-lock.json" package-lock.json &&
        [ -f node_modules/playwright-core/package.json ]; then
        return 0
    fi
    cp "$BTL_SRC/tests/integration/package.json" "$BTL_SRC/tests/integration/package-lock.json" .
    # No browser download: the system chromium is used.
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 timeout 300 npm ci --no-audit --no-fund --loglevel=error
}
if ! (flock 9; install_playwright) 9>"$NODE_DIR/.lock" >"$T/npm.log" 2>&1; then
    cat "$T/npm.log"
    fail "npm ci of playwright-core (see npm output above)"
    finish
fi
pass "playwright-core installed in $NODE_DIR"

BTL_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export BTL_JWT_SECRET T
write_config "$T/btl.yaml" <<'EOF2'
api: { jwt_secret: "${BTL_JWT_SECRET}", public_reads: true }
scheduler: { check_interval: 200ms }
worker: { concurrency: 2, lease: 10s, poll_fallback: 500ms }
tasks:
  ticking:
    service: generator
    schedule: "every 1h"
    job: noop
  nightly:
    service: curator
    schedule: "0 3 * * *"
    timezone: Europe/Berlin
    job: noop
  posting:
    service: poster
    schedule: "once 2099-01-01T00:00:00Z"
    job: noop
EOF2

start scheduler btl-scheduler --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_SCHED" --instance sched-a
start generator btl-generator --config "$T/btl.yaml" --http "127.0.0.1:$HTTP_GEN" --instance gen-a
check "scheduler ready" wait_for "ready" 30 http_ok "$HTTP_SCHED" /health/ready
check "generator ready" wait_for "ready" 30 http_ok "$HTTP_GEN" /health/ready
check "tasks registered" wait_for "tasks rows" 20 sql_eq "SELECT count(*) FROM tasks" 3

page=$(curl -fsS --max-time 5 -D "$T/headers" "http://127.0.0.1:$HTTP_SCHED/" || true)
check "GET / is the dashboard" grep -q '<title>Botticelli</title>' <<<"$page"
check "served as text/html" grep -qi '^content-type: text/html' "$T/headers"
check "page references no external URL" bash -c "! grep -Eo '(src|href)=\"(https?:)?//' <<<\"\$1\"" _ "$page"
check "HEAD / answers 200" test "$(curl -s -I -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP_SCHED/")" = 200
check "POST / is not the page" test "$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$HTTP_SCHED/")" = 404
check "unknown path still 404" test "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP_SCHED/nope")" = 404

# Posts for the pipeline counts and one to approve.
sql "INSERT INTO posts (content_hash, body, narrative, angle, status, score) VALUES
     ('h1', 'A pending post about <b>feature</b> & things', 'carousel', 'feature', 'pending', 72.5),
     ('h2', 'Second pending post', 'carousel', 'usecase', 'pending', 41),
     ('h3', 'Posted one', 'carousel', 'tutorial', 'posted', 80),
     ('h4', 'Rejected one', 'carousel', 'community', 'rejected', 12)"
post_id=$(sql "SELECT id FROM posts WHERE content_hash = 'h1'")
reject_id=$(sql "SELECT id FROM posts WHERE content_hash = 'h2'")

rm -f "$BTL_BUILD/artifacts/dashboard.png" "$BTL_BUILD/artifacts/dashboard-failed.png" \
    "$BTL_BUILD/artifacts/dashboard.png.console.txt"
mkdir -p "$T/profile"
if DASH_URL="http://127.0.0.1:$HTTP_SCHED/" DASH_TASKS="nightly,posting,ticking" \
    DASH_PAUSE=nightly DASH_TRIGGER=ticking DASH_POST="$post_id" DASH_REJECT="$reject_id" DASH_PROFILE="$T/profile" \
    DASH_SHOT="$BTL_BUILD/artifacts/dashboard.png" DASH_MODULES="$NODE_DIR/node_modules" \
    ASAN_OPTIONS= UBSAN_OPTIONS= timeout 120 node "$BTL_SRC/tests/integration/dashboard.mjs" \
    >"$T/browser.log" 2>&1; then
    pass "browser script"
else
    fail "browser script (exit $?)"
fi
cat "$T/browser.log"

check "pause clicked in the browser is in the database" wait_for "paused" 10 \
    sql_eq "SELECT is_paused FROM tasks WHERE task_id = 'nightly'" t
check "other tasks untouched" sql_eq "SELECT count(*) FROM tasks WHERE is_paused" 1
check "trigger clicked in the browser ran the task" wait_for "manual run" 20 \
    sql_ge "SELECT count(*) FROM executions WHERE task_id = 'ticking' AND trigger = 'manual'" 1
check "approve clicked in the browser" wait_for "approved" 10 \
    sql_eq "SELECT status FROM posts WHERE id = ${post_id:-0}" approved
check "reject clicked in the browser, with the reason typed in" wait_for "rejected" 10 \
    sql_eq "SELECT status || ':' || reject_reason FROM posts WHERE id = ${reject_id:-0}" \
    "rejected:off-topic this week"
check "the unauthenticated click changed nothing else" \
    sql_eq "SELECT count(*) FROM posts WHERE status = 'pending'" 0
check "screenshot saved" test -s "$BTL_BUILD/artifacts/dashboard.png"

for s in scheduler generator; do
    stop_wait "$s"
    check "$s exits 0 on SIGTERM (got $STOP_STATUS)" test "$STOP_STATUS" = 0
done
finish
