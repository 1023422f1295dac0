#!/usr/bin/env bash
# Installs a built wheel into a fresh venv under /tmp and runs the Python test
# suite from a copy of tests/ only, so nothing from the source tree can be
# imported: this tests what users get.
#
#   bash tests/wheel/run.sh [WHEEL]    # default: wheelhouse/*_$(uname -m).whl (repaired)
#
# Runs the whole suite with SPARSEPROP_ISA unset (every path the CPU has is
# still forced in turn by the tests' `isa` fixture), then a small subset with
# the import-time default forced to avx2 and to scalar.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
# Default: the repaired wheel for this machine's architecture (build.sh leaves one per arch).
whl=${1:-$(ls "$root"/wheelhouse/*_"$(uname -m)".whl "$root"/dist/*/*_"$(uname -m)".whl 2>/dev/null | head -n 1 || true)}
[ -n "$whl" ] && [ -f "$whl" ] || { echo "no wheel: run tests/wheel/build.sh first" >&2; exit 1; }
whl=$(cd "$(dirname "$whl")" && pwd)/$(basename "$whl")
SUBSET=${SPARSEPROP_WHEEL_SUBSET:-linear_grad and not hypothesis}

work=$(mktemp -d /tmp/sparseprop-wheel.XXXXXX)
trap 'rm -rf "$work"' EXIT
python -m venv "$work/venv"
py=$work/venv/bin/python
# torch pinned and first: an unpinned torch with nothing installed pulls a CUDA build.
"$py" -m pip install -q torch==2.13.0
"$py" -m pip install -q "$whl" pytest pytest-benchmark hypothesis scikit-learn numpy

cp -r "$root/tests" "$work/tests"
cp -r "$root/examples" "$work/examples"  # tests/test_example_*.py run them
rm -rf "$work/tests/cpp" "$work/tests/wheel"
# pyproject.toml's pytest settings, without pyproject.toml itself.
"$py" - "$root/pyproject.toml" > "$work/pytest.ini" <<'PYEOF'
import sys, tomllib
opts = tomllib.load(open(sys.argv[1], "rb"))["tool"]["pytest"]["ini_options"]
print("[pytest]")
for key, value in opts.items():
    if key == "testpaths":
        continue
    if isinstance(value, list):
        print(key + " =" + "".join("\n    " + v for v in value))
    else:
        print(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
PYEOF

cd "$work"
unset SPARSEPROP_ISA
"$py" - <<'PYEOF'
import sparseprop
assert "site-packages" in sparseprop.__file__, sparseprop.__file__
print("testing", sparseprop.__file__)
sparseprop.show_config()
PYEOF
"$py" -m pytest -p no:cacheprovider tests

available=$("$py" -c "import sparseprop; print(' '.join(sparseprop.available_isas()))")
for isa in avx2 scalar; do
  if [[ " $available " != *" $isa "* ]]; then
    echo "SPARSEPROP_ISA=$isa: not available on this CPU/build ($available): skipped"
    continue
  fi
  SPARSEPROP_ISA=$isa "$py" -c "import sparseprop; assert sparseprop.get_isa() == '$isa', sparseprop.get_isa()"
  echo "SPARSEPROP_ISA=$isa, -k '$SUBSET':"
  SPARSEPROP_ISA=$isa "$py" -m pytest -p no:cacheprovider -q tests -k "$SUBSET"
done
