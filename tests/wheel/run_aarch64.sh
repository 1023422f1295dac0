#!/usr/bin/env bash
# The aarch64 wheel on an emulated Debian bookworm arm64 system (python3 3.11,
# matching the cp311 wheel): the root filesystem comes from Debian's packages
# (debootstrap --foreign: download and unpack, no package scripts run), and
# every aarch64 program runs under qemu-aarch64-static -L ROOT, which resolves
# the dynamic loader and libraries inside ROOT. No binfmt_misc is needed, so
# nothing on the host changes; the price is that an emulated program cannot
# exec another aarch64 program, hence a venv without ensurepip and pip run
# from Debian's bundled pip wheel.
#
#   bash tests/wheel/run_aarch64.sh [WHEEL]   # default: wheelhouse/*_aarch64.whl
#
# Needs: apt-get install qemu-user-static debootstrap. Root filesystem and venv
# are kept in SPARSEPROP_ARM64_ROOT (default /var/tmp/sparseprop-arm64/root)
# for the next run. torch: SPARSEPROP_ARM64_TORCH (default 2.10.0, the newest
# whose PyPI aarch64 wheel is a CPU build; 2.12/2.13 pull CUDA aarch64 libraries).
set -euo pipefail
root_dir=$(cd "$(dirname "$0")/../.." && pwd)
whl=${1:-$(ls "$root_dir"/wheelhouse/*_aarch64.whl 2>/dev/null | head -n 1 || true)}
[ -n "$whl" ] && [ -f "$whl" ] || { echo "no aarch64 wheel: run tests/wheel/build.sh first" >&2; exit 1; }
R=${SPARSEPROP_ARM64_ROOT:-/var/tmp/sparseprop-arm64/root}
TORCH=${SPARSEPROP_ARM64_TORCH:-2.10.0}
MIRROR=${SPARSEPROP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
Q=(qemu-aarch64-static -L "$R")

if [ ! -x "$R/usr/bin/python3.11" ] || [ ! -f "$R/usr/share/python-wheels/"pip-*.whl ]; then
  rm -rf "$R"; mkdir -p "$(dirname "$R")"
  debootstrap --arch=arm64 --foreign --variant=minbase --include=python3,python3-venv \
    bookworm "$R" "$MIRROR" > "$(dirname "$R")/debootstrap.log" 2>&1 ||
    { tail -20 "$(dirname "$R")/debootstrap.log"; exit 1; }
  # The first stage unpacks only the essential packages; the rest of what it
  # downloaded (python3, python3-venv, ...) is unpacked here the same way.
  for d in "$R"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$d" "$R"; done
fi
V=$R/opt/venv
PIPWHL=$(ls "$R"/usr/share/python-wheels/pip-*.whl | head -n 1)
if [ ! -x "$V/bin/python" ]; then
  "${Q[@]}" "$R/usr/bin/python3" -m venv --without-pip "$V"
fi
pip() { "${Q[@]}" "$V/bin/python" "$PIPWHL/pip" "$@"; }
"${Q[@]}" "$V/bin/python" -c 'import platform, sys; print("emulated:", platform.machine(), sys.version.split()[0], open("/etc/debian_version").read().strip())'
pip install -q --no-compile --progress-bar off torch=="$TORCH" numpy
pip install -q --no-compile --no-deps --force-reinstall "$whl"

work=$(mktemp -d /tmp/sparseprop-arm64.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
unset SPARSEPROP_ISA
"${Q[@]}" "$V/bin/python" - <<'PYEOF'
import torch, sparseprop
from torch import nn
assert "site-packages" in sparseprop.__file__, sparseprop.__file__
print("torch", torch.__version__, "| sparseprop from", sparseprop.__file__)
sparseprop.show_config()
isa = sparseprop.get_isa()
print("ISA:", isa, "| available:", sparseprop.available_isas())
assert isa == "neon", isa
torch.manual_seed(0)

def check(name, sparse, dense, x):
    xs = x.clone().requires_grad_(True)
    xd = x.clone().requires_grad_(True)
    ys, yd = sparse(xs), dense(xd)
    g = torch.randn_like(yd)
    ys.backward(g); yd.backward(g)
    # Weight gradient: the dense gradient at the nonzeros vs the values' gradient,
    # both sorted (independent of the order the sparse layer stores its entries in).
    gw = dense.weight.grad[dense.weight.detach() != 0].sort().values
    diffs = {"out": (ys - yd).abs().max().item(),
             "grad_x": (xs.grad - xd.grad).abs().max().item(),
             "grad_w": (sparse.values.grad.flatten().sort().values - gw).abs().max().item()}
    if dense.bias is not None:
        diffs["grad_b"] = (sparse.bias.grad - dense.bias.grad).abs().max().item()
    print(f"{name}: max abs diff " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert all(v < 1e-3 for v in diffs.values()), diffs

lin = nn.Linear(256, 128)
sp = sparseprop.SparseLinear.from_dense(lin, sparsity=0.9)
dense = sp.to_dense()
check("SparseLinear 256->128 @0.9, batch 32", sp, dense, torch.randn(32, 256))

conv = nn.Conv2d(16, 32, 3, padding=1)
sc = sparseprop.SparseConv2d.from_dense(conv, sparsity=0.9)
dc = sc.to_dense()
check("SparseConv2d 3x3 16->32 @0.9, 4x16x12x12", sc, dc, torch.randn(4, 16, 12, 12))
print("aarch64 wheel smoke passed")
PYEOF
