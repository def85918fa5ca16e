#!/usr/bin/env bash
# make proof: the long checks that do not fit in make test, in order.
#
#   1. the full fault-injection run (tests/integration/test_faults.sh with
#      BTL_PROOF=full: 1,000 posts, >= 100 SIGKILLs, Postgres restarts,
#      leader kills, 100,000 junk frames) on the sanitized build; its
#      figures -> the proof:faults block of docs/RELIABILITY.md;
#   2. bash scripts/fuzz.sh FUZZ_SECONDS: its table -> proof:fuzz block
#   3. bash scripts/valgrind.sh RELEASE_BUILD: its table -> proof:valgrind
#   4. the benchmarks of make bench (queue, pipeline, cost, footprint), each
#      table -> the proof:<name> block of docs/PERFORMANCE.md
#
# Environment:
#   PROOF_BUILD          sanitized build directory (default build-test)
#   PROOF_RELEASE_BUILD  release build for valgrind (default build)
#   FUZZ_SECONDS         seconds per fuzz target (default 60)
#   PROOF_SKIP           comma list of steps to skip: faults,fuzz,valgrind,bench
#   PROOF_DOC            reliability figures (default docs/RELIABILITY.md)
#   PROOF_PERF_DOC       performance figures (default docs/PERFORMANCE.md)
#   BTL_FAULTS_SEED      fixes the fault run's random choices
# Exits 1 if any step failed (every step still runs).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${PROOF_BUILD:-build-test}
RELEASE=${PROOF_RELEASE_BUILD:-build}
SKIP=",${PROOF_SKIP:-},"
DOC=${PROOF_DOC:-docs/RELIABILITY.md}
OUT=$ROOT/$BUILD/proof
FAILED=()

skip() { [[ $SKIP == *",$1,"* ]]; }
step() { printf '\n==== proof: %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

# ---- 1. fault injection ----------------------------------------------------------
if ! skip faults; then
    step "fault injection (full)"
    mkdir -p "$OUT"
    cmake -S . -B "$BUILD" -DBTL_SANITIZE=ON >/dev/null && cmake --build "$BUILD" -j"$(nproc)" >/dev/null ||
        { echo "proof: build of $BUILD failed" >&2; exit 1; }
    rm -f "$OUT/faults.figures"
    t0=$(date +%s)
    # The environment ctest gives an integration test (CMakeLists.txt).
    BTL_SRC=$ROOT BTL_BUILD=$ROOT/$BUILD BTL_SHARED=${BTL_SHARED:-$ROOT/../shared} \
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1:exitcode=99 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=98 \
        BTL_PROOF=full BTL_FAULTS_FIGURES="$OUT/faults.figures" \
        bash tests/integration/test_faults.sh 2>&1 | tee "$OUT/faults.log"
    rc=${PIPESTATUS[0]}
    wall=$(($(date +%s) - t0))
    [ "$rc" -eq 0 ] || FAILED+=(faults)
    if [ -s "$OUT/faults.figures" ]; then
        # The figures as a table, then into the proof:faults block.
        python3 - "$OUT/faults.md" "$OUT/faults.figures" "$OUT/faults.log" "$rc" "$wall" <<'PY' &&
import re, sys, subprocess, datetime
out, figs, logf, rc, wall = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
f = {}
for line in open(figs):
    parts = line.rstrip("\n").split(" ", 2)
    if len(parts) >= 2 and parts[0] == "FIGURE":
        f[parts[1]] = parts[2] if len(parts) > 2 else ""
log = open(logf, errors="replace").read()
checks = re.findall(r"^(\d+) passed, (\d+) failed$", log, re.M)
passed, failed = checks[-1] if checks else ("?", "?")
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
g = lambda k: f.get(k, "?")
lines = [
    f"Run: `make proof` (BTL_PROOF=full), {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, commit {commit}, "
    f"seed {g('seed')}, sanitized build (ASan + UBSan), {wall} s wall. "
    f"Checks: {passed} passed, {failed} failed ({'PASS' if rc == 0 else 'FAIL'}).",
    "",
    "| figure | value |",
    "|---|---:|",
    f"| generation jobs (carousel iterations x 5) | {g('generation_jobs')} (dead: {g('generation_jobs_dead')}) |",
    f"| generation jobs done without a post (skipped, reason logged) | {g('generation_no_post')} |",
    f"| posts written | {g('posts')} |",
    f"| posted | {g('posted')} |",
    f"| failed (with last_error) | {g('failed')} |",
    f"| unknown (with last_error) | {g('unknown')} |",
    f"| rejected by the curator (with reason) | {g('rejected')} |",
    f"| lost (not in one of those states) | {g('lost')} |",
    f"| duplicate messages at the fake Discord, by nonce | {g('duplicates_nonce')} |",
    f"| duplicate messages at the fake Discord, by content | {g('duplicates_content')} |",
    f"| requests / messages at the fake Discord | {g('discord_requests')} / {g('discord_messages')} |",
    f"| injected Discord faults | {g('discord_faults')} |",
    f"| LLM requests | {g('llm_requests')} |",
    f"| injected LLM faults | {g('llm_faults')} |",
    f"| SIGKILLs (restarted) | {g('kills')} ({g('kills_by_service')}) |",
    f"| Postgres restarts | {g('pg_restarts')} ({g('pg_modes')}) |",
    f"| leader SIGKILLs / standby first fire after | {g('leader_kills')} / {g('failover_ms')} ms (max {g('failover_max_ms')} ms, failover 3 s) |",
    f"| malformed bus frames sent / counted in btl_bus_frames_rejected_total | {g('frames_sent')} / {g('frames_rejected')} |",
    f"| junk control requests / answered with an error | {g('control_junk')} / {g('control_errors')} |",
    f"| max RSS of any service (bound) | {g('rss_max_mib')} MiB ({g('rss_bound_mib')} MiB) |",
    "",
]
open(out, "w").write("\n".join(lines))
PY
            bash scripts/doc_block.sh "$DOC" faults "$OUT/faults.md"
    else
        echo "proof: the fault run printed no figures; $DOC left as it was" >&2
    fi
fi

# Each later step's measured table replaces a generated block of the docs
# (scripts/doc_block.sh): proof:fuzz and proof:valgrind in RELIABILITY.md,
# proof:queue, proof:pipeline, proof:cost and proof:footprint in
# PERFORMANCE.md. A failed step still writes its table (it says FAILED).
PERF=${PROOF_PERF_DOC:-docs/PERFORMANCE.md}
stamp() { echo "Run: \`make proof\`, $(date -u '+%Y-%m-%d %H:%M') UTC, commit $(git rev-parse --short HEAD), $(nproc) CPUs, 1-minute load before the step $(cut -d' ' -f1 /proc/loadavg)."; }
mkdir -p "$OUT"

# ---- 2. fuzzing ------------------------------------------------------------------
if ! skip fuzz && [ -f scripts/fuzz.sh ]; then
    step "fuzz (${FUZZ_SECONDS:-60} s per target)"
    head=$(stamp)
    bash scripts/fuzz.sh "${FUZZ_SECONDS:-60}" || FAILED+=(fuzz)
    if [ -s build-fuzz/summary.txt ]; then
        { echo '```'; cat build-fuzz/summary.txt; echo '```'; } >"$OUT/fuzz.md"
        bash scripts/doc_block.sh "$DOC" fuzz "$OUT/fuzz.md" "$head"
    fi
fi

# ---- 3. valgrind -----------------------------------------------------------------
if ! skip valgrind && [ -f scripts/valgrind.sh ]; then
    step "valgrind ($RELEASE)"
    head=$(stamp)
    { cmake -S . -B "$RELEASE" -DCMAKE_BUILD_TYPE=Release -DBTL_SANITIZE=OFF >/dev/null &&
        cmake --build "$RELEASE" -j"$(nproc)" >/dev/null &&
        bash scripts/valgrind.sh "$RELEASE" | tee "$OUT/valgrind.md"; } || FAILED+=(valgrind)
    grep -q '^| btl-' "$OUT/valgrind.md" 2>/dev/null &&
        bash scripts/doc_block.sh "$DOC" valgrind "$OUT/valgrind.md" "$head"
fi

# ---- 4. benchmarks (what make bench runs, one block each) ------------------------
if ! skip bench; then
    step "bench"
    { cmake -S . -B "$RELEASE" -DCMAKE_BUILD_TYPE=Release -DBTL_SANITIZE=OFF >/dev/null &&
        cmake --build "$RELEASE" -j"$(nproc)" >/dev/null; } || FAILED+=(bench-build)
    bench_step() { # NAME RESULT_FILE COMMAND...
        local name=$1 result=$2 head
        shift 2
        step "bench: $name"
        head=$(stamp)
        rm -f "$result"
        "$@" || FAILED+=("bench-$name")
        [ -s "$result" ] && bash scripts/doc_block.sh "$PERF" "$name" "$result" "$head"
    }
    bench_step queue bench/queue/results/latest.md bash bench/queue/run.sh "$RELEASE"
    bench_step pipeline bench/results/pipeline.md bash bench/pipeline.sh "$RELEASE"
    bench_step cost bench/results/cost.md bash bench/cost.sh "$RELEASE"
    bench_step footprint "$OUT/footprint.md" \
        bash -c 'set -o pipefail; bash bench/footprint.sh "$1" | tee "$2"' _ "$RELEASE" "$OUT/footprint.md"
fi

echo
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "proof: FAILED: ${FAILED[*]}"
    exit 1
fi
echo "proof: all steps passed"
