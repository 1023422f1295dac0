#!/usr/bin/env bash
# Builds the core and the C++ kernel tests with AddressSanitizer + UBSan
# (-DSPARSEPROP_SANITIZE=ON, into build/asan) and runs the native kernel tests:
# every ISA path this CPU has. Any sanitizer report fails the run.
# (Not under qemu: ASan's shadow memory does not work reliably in qemu-user.)
#
# Then, when the Python test dependencies are importable (torch, pybind11,
# pytest, hypothesis; SPARSEPROP_SANITIZE_PYTHON=0 skips it, =require fails
# when they are not), the same build
# also makes a sanitized extension and the Python suite runs on it (ASan
# preloaded into python), covering what only Python reaches: bindings, conv
# layout transforms, workspace reuse. Leak detection is off there: CPython and
# torch keep allocations alive at exit by design.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
PY=${PYTHON:-python}

with_python=OFF
if [ "${SPARSEPROP_SANITIZE_PYTHON:-auto}" != 0 ]; then
  if "$PY" -c "import torch, pybind11, pytest, hypothesis" 2> /dev/null; then
    with_python=ON
  elif [ "${SPARSEPROP_SANITIZE_PYTHON:-auto}" = require ]; then
    echo "SPARSEPROP_SANITIZE_PYTHON=require, but $PY cannot import torch, pybind11, pytest and hypothesis" >&2
    exit 1
  fi
fi
# -O2 -g: the same vectorized code paths as the release build, with line numbers.
cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSPARSEPROP_SANITIZE=ON -DSPARSEPROP_TESTS=ON -DSPARSEPROP_PYTHON=$with_python \
  -DPython_EXECUTABLE="$(command -v "$PY")" \
  -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir 2> /dev/null || true)" > /dev/null
cmake --build build/asan > /dev/null

# ---------------------------------------------------------------- C++ kernel tests
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export ASAN_OPTIONS=detect_leaks=1
# Reports go to stderr; keep a copy so that a report which somehow does not
# change the exit status still fails the run.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
./build/asan/test_kernels 2> "$tmp/stderr" || status=$?
cat "$tmp/stderr" >&2
if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$tmp/stderr"; then
  echo "sanitizer reported errors (see above)" >&2
  exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "sanitized kernel tests failed (exit status $status)" >&2
  exit "$status"
fi
echo "sanitized C++ kernel tests: no ASan/UBSan/LSan reports"

# ---------------------------------------------------------------- Python suite
if [ "$with_python" != ON ]; then
  echo "Python suite under ASan+UBSan skipped (torch/pybind11/pytest/hypothesis not importable, or SPARSEPROP_SANITIZE_PYTHON=0)"
  exit 0
fi
so=$(ls build/asan/_C*.so)
# python itself is not instrumented: the ASan runtime must be loaded first, and
# libstdc++ with it so that ASan's __cxa_throw interceptor finds the real one.
preload=$(ldd "$so" | awk '$1 ~ /^lib(asan|stdc\+\+)\.so/ { print $3 }' | sort | paste -sd: -)
# A package made of the sources' Python files and the sanitized extension; the
# tests run from a copy of tests/ so nothing else named sparseprop is in reach.
mkdir -p "$tmp/stage"
cp -r python/sparseprop "$tmp/stage/"
cp "$so" "$tmp/stage/sparseprop/"
cp -r tests "$tmp/stage/tests"
cp -r examples "$tmp/stage/examples"  # tests/test_example_*.py run them
rm -rf "$tmp/stage/tests/cpp" "$tmp/stage/tests/wheel"
mkdir "$tmp/reports"
status=0
(
  cd "$tmp/stage"
  export PYTHONPATH="$tmp/stage" LD_PRELOAD="$preload"
  # log_path: pytest captures stderr (and some tests run subprocesses), so
  # reports go to files instead.
  export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:log_path=$tmp/reports/asan"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$tmp/reports/ubsan"
  "$PY" -c "import sparseprop; assert sparseprop.__file__.startswith('$tmp/stage/'), sparseprop.__file__"
  "$PY" -m pytest -q -p no:cacheprovider -c "$root/pyproject.toml" --rootdir "$tmp/stage" tests
) || status=$?
if [ -n "$(ls "$tmp/reports")" ]; then
  cat "$tmp"/reports/* >&2
  echo "sanitizer reported errors in the Python suite (see above)" >&2
  exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "Python suite under ASan+UBSan failed (exit status $status)" >&2
  exit "$status"
fi
echo "Python suite under ASan+UBSan: no reports"
