#!/usr/bin/env bash
# libFuzzer run of the decoders and parsers (issue 5; docs/RELIABILITY.md).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     (make fuzz FUZZ_SECONDS=N)
#
# Builds every tests/fuzz/fuzz_<target>.c with clang
# (-fsanitize=fuzzer,address,undefined) against libshared/src/*.c compiled
# directly with the same pkg-config flags as CMakeLists.txt (the CMake build
# is gcc and stays untouched), then runs each target for SECONDS (default
# 60), FUZZ_JOBS (default 2) at a time. Seeds: tests/fuzz/corpus/<target>/
# (read only); inputs found on the way go to $FUZZ_BUILD/corpus/<target>/,
# crashes to $FUZZ_BUILD/crashes/<target>/. Prints executions and crashes
# per target; exits 1 if any target crashed, leaked or timed out.
#
# Environment: FUZZ_BUILD (default build-fuzz), FUZZ_JOBS (2),
# FUZZ_RSS_MB (2048), FUZZ_BUILD_ONLY=1 to stop after building.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${1:-60}
shift || true
OUT=${FUZZ_BUILD:-build-fuzz}
JOBS=${FUZZ_JOBS:-2}
RSS_MB=${FUZZ_RSS_MB:-2048}
case $SECS in '' | *[!0-9]*)
    echo "fuzz: SECONDS must be a number, got '$SECS'" >&2
    exit 2
    ;;
esac

# ---- toolchain ---------------------------------------------------------------
need=()
for p in clang libclang-rt-14-dev pkg-config libnng-dev libmsgpack-dev libpq-dev \
    libcurl4-openssl-dev libyaml-dev libmicrohttpd-dev libjansson-dev libjwt-dev tzdata; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "fuzz: installing ${need[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
CC=${FUZZ_CC:-$(command -v clang || command -v clang-14)}

# ---- build -------------------------------------------------------------------
version=$(sed -n 's/^project(botticelli VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
pkgs="msgpack libpq libcurl yaml-0.1 libmicrohttpd jansson libjwt"
# -fno-sanitize-recover: a UBSan finding is a crash libFuzzer records.
common=(-std=c11 -g -O1 -fno-omit-frame-pointer -D_GNU_SOURCE "-DBTL_VERSION=\"${version:-0}\""
    -fno-sanitize-recover=all -I"$ROOT/libshared/include" $(pkg-config --cflags $pkgs))
libs=($(pkg-config --libs $pkgs) -lnng -lpthread -lm)

mkdir -p "$OUT/obj"
# The library gets coverage instrumentation but no libFuzzer main.
objs=()
pids=()
for src in libshared/src/*.c; do
    obj="$OUT/obj/$(basename "${src%.c}").o"
    objs+=("$obj")
    if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ -n "$(find libshared/include -newer "$obj" -print -quit)" ]; then
        "$CC" "${common[@]}" -Wall -Wextra -fsanitize=fuzzer-no-link,address,undefined \
            -c "$src" -o "$obj" &
        pids+=($!)
        if [ ${#pids[@]} -ge "$JOBS" ]; then
            wait "${pids[0]}"
            pids=("${pids[@]:1}")
        fi
    fi
done
for p in "${pids[@]}"; do wait "$p"; done
rm -f "$OUT/libbtl_fuzz.a"
ar rcs "$OUT/libbtl_fuzz.a" "${objs[@]}"

all_targets=()
for src in tests/fuzz/fuzz_*.c; do
    t=$(basename "${src%.c}")
    t=${t#fuzz_}
    all_targets+=("$t")
    "$CC" "${common[@]}" -Wall -Wextra -Werror -fsanitize=fuzzer,address,undefined \
        "$src" "$OUT/libbtl_fuzz.a" "${libs[@]}" -o "$OUT/fuzz_$t"
done
echo "fuzz: built ${all_targets[*]} in $OUT/ with $("$CC" --version | head -1)"
[ "${FUZZ_BUILD_ONLY:-0}" = 1 ] && exit 0

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")

# ---- run ---------------------------------------------------------------------
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

run_one() {
    local t=$1
    local seeds="tests/fuzz/corpus/$t" work="$OUT/corpus/$t" crashes="$OUT/crashes/$t"
    mkdir -p "$work" "$crashes" "$seeds"
    local dict=()
    [ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
    # First corpus dir receives new inputs; the committed seeds stay as they are.
    "$OUT/fuzz_$t" "$work" "$seeds" "${dict[@]}" -max_total_time="$SECS" -timeout=10 \
        -rss_limit_mb="$RSS_MB" -max_len=65536 -print_final_stats=1 \
        -artifact_prefix="$crashes/" >"$OUT/$t.log" 2>&1
}

start=$(date +%s)
declare -A rcs
running=()
names=()
for t in "${targets[@]}"; do
    [ -x "$OUT/fuzz_$t" ] || { echo "fuzz: no target '$t' (have: ${all_targets[*]})" >&2; exit 2; }
    echo "fuzz: $t for ${SECS}s (log $OUT/$t.log)"
    run_one "$t" &
    running+=($!)
    names+=("$t")
    if [ ${#running[@]} -ge "$JOBS" ]; then
        if wait "${running[0]}"; then rcs[${names[0]}]=0; else rcs[${names[0]}]=$?; fi
        running=("${running[@]:1}")
        names=("${names[@]:1}")
    fi
done
for i in "${!running[@]}"; do
    if wait "${running[$i]}"; then rcs[${names[$i]}]=0; else rcs[${names[$i]}]=$?; fi
done

# ---- summary -----------------------------------------------------------------
total=0
bad=0
summary="$OUT/summary.txt"
{
    printf '%-18s %14s %10s %8s %7s %s\n' target executions exec/s corpus crashes status
    for t in "${targets[@]}"; do
        log="$OUT/$t.log"
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
        corpus=$(find "$OUT/corpus/$t" -type f | wc -l)
        ncrash=$(find "$OUT/crashes/$t" -type f | wc -l)
        status=ok
        if [ "${rcs[$t]}" != 0 ] || [ "$ncrash" -gt 0 ]; then
            status="FAILED (exit ${rcs[$t]}, see $log)"
            bad=$((bad + 1))
        fi
        total=$((total + ${execs:-0}))
        printf '%-18s %14s %10s %8s %7s %s\n' "$t" "${execs:-?}" "${rate:-?}" "$corpus" "$ncrash" "$status"
    done
    printf '%-18s %14s   (%ss per target, %d at a time, %ss wall, %s)\n' total "$total" "$SECS" \
        "$JOBS" "$(($(date +%s) - start))" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$summary" # not a pipe: bad must survive the block
cat "$summary"
if [ "$bad" -gt 0 ]; then
    echo "fuzz: $bad target(s) failed; reproduce with $OUT/fuzz_<target> <crash file>" >&2
    exit 1
fi
