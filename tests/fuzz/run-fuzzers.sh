#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (AddressSanitizer and UBSan on) in their own
# build directory and runs each one for a bounded time, starting from its committed seed
# corpus. Prints executions, new inputs found and crashes per target; exits non-zero if
# any target crashed (a sanitizer report, a broken invariant, a leak, an out-of-memory or
# a hang), with the reproducer left under BUILD/artifacts/<target>/.
#
# Reproduce a crash:   BUILD/tests/fuzz/<target> BUILD/artifacts/<target>/crash-...
# Keep it as a test:   copy the file into tests/fuzz/corpus/<target>/ (replayed by ctest)
#
# Environment: FUZZ_SECONDS (per target, default 60), FUZZ_TARGETS (names, default all),
# FUZZ_BUILD_DIR (default build-fuzz), FUZZ_CC (default clang, else clang-14).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${FUZZ_BUILD_DIR:-$ROOT/build-fuzz}
SECS=${FUZZ_SECONDS:-60}
CC=${FUZZ_CC:-}
if [ -z "$CC" ]; then
    for c in clang clang-14; do command -v "$c" >/dev/null && CC=$c && break; done
fi
if [ -z "$CC" ]; then
    echo "run-fuzzers: no clang found: apt-get install clang-14 libclang-rt-14-dev" >&2
    exit 1
fi

if [ -n "${FUZZ_TARGETS:-}" ]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    targets=()
    for f in "$ROOT"/tests/fuzz/fuzz_*.c; do targets+=("$(basename "$f" .c)"); done
fi
# fuzz_checkpoint exists only once the checkpoint module does (see tests/fuzz/CMakeLists.txt).
[ -f "$ROOT/include/ddp/checkpoint.h" ] || targets=("${targets[@]/fuzz_checkpoint/}")
read -r -a targets <<<"${targets[*]}"

mkdir -p "$BUILD"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_C_COMPILER="$CC" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DDDP_FUZZ=ON -DDDP_BUILD_TESTS=OFF -DDDP_CUDA=OFF >"$BUILD/configure.log" 2>&1 ||
    { cat "$BUILD/configure.log"; exit 1; }
cmake --build "$BUILD" -j "$(nproc)" --target "${targets[@]}"

# Leaks in the parsers are bugs too (no MPI is involved here, so no foreign leaks).
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
crashed=0
summary=()
for t in "${targets[@]}"; do
    seeds="$ROOT/tests/fuzz/corpus/$t"
    work="$BUILD/corpus/$t"     # grows with what the fuzzer finds; never the source tree
    art="$BUILD/artifacts/$t"
    log="$BUILD/$t.log"
    rm -rf "$art" # reproducers of an earlier run are not this run's crashes
    mkdir -p "$work" "$art"
    echo "run-fuzzers: $t for $SECS s (log: $log)"
    set +e
    "$BUILD/tests/fuzz/$t" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$art/" "$work" "$seeds" >"$log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    found=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -1)
    corpus=$(find "$work" -type f | wc -l)
    crashes=$(find "$art" -type f | wc -l)
    line=$(printf '%-16s %6s s %12s execs %8s/s %6s new %6s corpus %3s crash(es)' "$t" "$SECS" \
        "${execs:-?}" "${rate:-?}" "${found:-?}" "$corpus" "$crashes")
    summary+=("$line")
    if [ $rc -ne 0 ] || [ "$crashes" -gt 0 ]; then
        crashed=1
        echo "run-fuzzers: $t FAILED (exit $rc); reproducers:"
        find "$art" -type f | sed 's/^/    /'
        grep -E "ERROR|SUMMARY|broken invariant|runtime error" "$log" | head -10 | sed 's/^/    | /'
    fi
done
echo
echo "target             time        executions     rate    new inputs  corpus  crashes"
printf '%s\n' "${summary[@]}"
exit $crashed
