#!/usr/bin/env bash
# Builds the core and the C++ kernel tests with AddressSanitizer + UBSan
# (-DSPARSEPROP_SANITIZE=ON, into build/asan) and runs the native kernel tests:
# every ISA path this CPU has. Any sanitizer report fails the run.
# (Not under qemu: ASan's shadow memory does not work reliably in qemu-user.)
set -euo pipefail
cd "$(dirname "$0")/../.."

# -O2 -g: the same vectorized code paths as the release build, with line numbers.
cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSPARSEPROP_SANITIZE=ON -DSPARSEPROP_PYTHON=OFF -DSPARSEPROP_TESTS=ON > /dev/null
cmake --build build/asan > /dev/null

export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export ASAN_OPTIONS=detect_leaks=1
# Reports go to stderr; keep a copy so that a report which somehow does not
# change the exit status still fails the run.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
./build/asan/test_kernels 2> "$log" || status=$?
cat "$log" >&2
if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$log"; then
  echo "sanitizer reported errors (see above)" >&2
  exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "sanitized kernel tests failed (exit status $status)" >&2
  exit "$status"
fi
echo "sanitized kernel tests: no ASan/UBSan/LSan reports"
