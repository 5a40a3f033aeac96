#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz (clang, ASan + UBSan) into
# build-fuzz/ and, for every target: replays its seed corpus
# (tests/fuzz/corpus/<target>/) and its kept crash inputs
# (tests/fuzz/regressions/<target>/), then fuzzes it for a fixed budget.
# Any crash, leak, sanitizer report or hang fails the script (non-zero exit);
# the input that did it is left under build-fuzz/crashes/<target>/.
#   scripts/fuzz.sh                              # every target, 30 s each
#   SIGNET_FUZZ_SECONDS=300 scripts/fuzz.sh jcs  # one target, longer
#   SIGNET_FUZZ_SECONDS=0 scripts/fuzz.sh        # replay only
# Targets run SIGNET_FUZZ_JOBS at a time (default: one per CPU).
# The inputs found while fuzzing grow build-fuzz/corpus/<target>/ (kept
# between runs), never the seeds in the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dir=$root/build-fuzz
seconds=${SIGNET_FUZZ_SECONDS:-30}
all=(jcs validators swu config device events route http)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

CC=${CC:-clang}
command -v "$CC" >/dev/null || { echo "fuzz.sh: $CC not found (scripts/deps.sh installs clang)" >&2; exit 2; }
cmake -S . -B "$dir" -DCMAKE_C_COMPILER="$CC" -DSIGNET_FUZZ=ON -DSIGNET_SANITIZE=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$dir" -j"$(nproc)" --target $(printf 'fuzz_%s ' "${targets[@]}") >/dev/null

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$root/tests/fuzz/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
common=(-timeout=25 -rss_limit_mb=2048 -malloc_limit_mb=1024 -print_final_stats=1)

# One target: replay, then fuzz. Prints one line; returns non-zero on failure.
run_target() {
  local t=$1
  local bin=$dir/tests/fuzz/fuzz_$t seeds=$root/tests/fuzz/corpus/$t
  local regress=$root/tests/fuzz/regressions/$t work=$dir/corpus/$t
  local crashes=$dir/crashes/$t log=$dir/fuzz-$t.log
  mkdir -p "$work" "$crashes"
  local dicts=() replay=("$seeds")
  [ -f "$root/tests/fuzz/$t.dict" ] && dicts=(-dict="$root/tests/fuzz/$t.dict")
  [ -d "$regress" ] && replay+=("$regress")
  # 1. replay: every seed and every kept crash input, once
  if ! "$bin" "${common[@]}" -runs=0 -artifact_prefix="$crashes/" "${replay[@]}" >"$log" 2>&1; then
    echo "fuzz.sh: $t: replaying the corpus and regressions FAILED (log: $log)" >&2
    tail -n 40 "$log" >&2
    return 1
  fi
  if [ "$seconds" -le 0 ]; then
    echo "fuzz.sh: $t: replay ok"
    return 0
  fi
  # 2. fuzz for the budget, from the seeds and what earlier runs found
  if ! "$bin" "${common[@]}" "${dicts[@]}" -max_total_time="$seconds" \
      -artifact_prefix="$crashes/" "$work" "$seeds" >>"$log" 2>&1; then
    echo "fuzz.sh: $t: FAILED (log: $log; input under $crashes/)" >&2
    grep -aE "ERROR|SUMMARY|fuzz_$t:|runtime error" "$log" | head -n 20 >&2 || true
    echo "fuzz.sh: fix it, then keep the input as tests/fuzz/regressions/$t/<name>" >&2
    return 1
  fi
  local execs rate
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  echo "fuzz.sh: $t: ok, ${execs:-?} runs in ${seconds} s (${rate:-?}/s)"
}

# Targets run SIGNET_FUZZ_JOBS at a time (default: one per CPU).
jobs_max=${SIGNET_FUZZ_JOBS:-$(nproc)}
status=0
running=0
for t in "${targets[@]}"; do
  if [ "$running" -ge "$jobs_max" ]; then
    wait -n || status=1
    running=$((running - 1))
  fi
  run_target "$t" &
  running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
  wait -n || status=1
  running=$((running - 1))
done
exit "$status"
