#!/usr/bin/env bash
# Sets up and runs the whole test suite: unit tests (cmocka) and end-to-end
# tests against the real signetd and a fresh SoftHSM2 token per test.
#   scripts/test.sh                     # normal (hardened) build in build/
#   SIGNET_SANITIZE=1 scripts/test.sh   # ASan+UBSan build in build-asan/
#   SIGNET_TSAN=1 scripts/test.sh       # ThreadSanitizer build in build-tsan/
# Under TSan every instrumented process (signetd, signet, the unit tests) writes
# its reports to build-tsan/tsan-reports/ and exits at the first one
# (halt_on_error, exit code 66), so a test talking to it fails; the run also
# fails if any report was written, whatever the tests said.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
tsan_reports=
if [ "${SIGNET_SANITIZE:-0}" = 1 ]; then
  dir=build-asan; flags=(-DSIGNET_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug)
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
  export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/lsan.supp:print_suppressions=0}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
elif [ "${SIGNET_TSAN:-0}" = 1 ]; then
  dir=build-tsan; flags=(-DSIGNET_TSAN=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo)
  tsan_reports=$PWD/$dir/tsan-reports
  rm -rf "$tsan_reports"
  mkdir -p "$tsan_reports"
  export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:exitcode=66:second_deadlock_stack=1:suppressions=$PWD/tests/tsan.supp:log_path=$tsan_reports/tsan}
else
  dir=build; flags=()
fi
cmake -S . -B "$dir" -DSIGNET_WERROR=ON "${flags[@]}" >/dev/null
cmake --build "$dir" -j"$(nproc)"
status=0
ctest --test-dir "$dir" --output-on-failure -j2 "$@" || status=$?
if [ -n "$tsan_reports" ] && [ -n "$(ls -A "$tsan_reports")" ]; then
  for f in "$tsan_reports"/*; do
    echo "=== ThreadSanitizer report $f"
    cat "$f"
  done
  echo "test.sh: ThreadSanitizer reported problems (above)" >&2
  [ "$status" -ne 0 ] || status=1
fi
exit "$status"
