#!/usr/bin/env bash
# Builds and runs the C++ kernel tests: natively (every x86 path this CPU has),
# then cross-compiled for aarch64 under qemu (the NEON path) when the tools exist.
set -euo pipefail
cd "$(dirname "$0")/../.."

cmake -S . -B build/cpp -G Ninja -DSPARSEPROP_PYTHON=OFF -DSPARSEPROP_TESTS=ON > /dev/null
cmake --build build/cpp > /dev/null
./build/cpp/test_kernels

if command -v aarch64-linux-gnu-g++ > /dev/null && command -v qemu-aarch64 > /dev/null; then
  cmake -S . -B build/aarch64 -G Ninja -DCMAKE_TOOLCHAIN_FILE=tests/cpp/aarch64.cmake \
    -DSPARSEPROP_PYTHON=OFF -DSPARSEPROP_TESTS=ON > /dev/null
  cmake --build build/aarch64 > /dev/null
  qemu-aarch64 -L /usr/aarch64-linux-gnu ./build/aarch64/test_kernels
else
  echo "aarch64 cross tools not found: NEON path not tested (apt-get install g++-aarch64-linux-gnu qemu-user)"
fi
