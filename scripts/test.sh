#!/usr/bin/env bash
# Sets up and runs the whole test suite: unit tests (cmocka) and end-to-end
# tests against the real signetd and a fresh SoftHSM2 token per test.
#   scripts/test.sh                 # normal build in build/
#   SIGNET_SANITIZE=1 scripts/test.sh   # ASan+UBSan build in build-asan/
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
if [ "${SIGNET_SANITIZE:-0}" = 1 ]; then
  dir=build-asan; flags=(-DSIGNET_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug)
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
  export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/lsan.supp:print_suppressions=0}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
else
  dir=build; flags=()
fi
cmake -S . -B "$dir" -DSIGNET_WERROR=ON "${flags[@]}" >/dev/null
cmake --build "$dir" -j"$(nproc)"
ctest --test-dir "$dir" --output-on-failure -j2 "$@"
