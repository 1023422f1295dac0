"""pytest-benchmark suites: dense nn.Conv2d vs sparseprop.SparseConv2d, forward+backward.

Two ResNet-18 (CIFAR) layers, 3x3 64->64 on 32x32 and 3x3 256->256 on 8x8 (stride
1, padding 1, no bias), at batch 32 and sparsity 0.9 and 0.95. The dense layer is
the sparse one's masked twin (``SparseConv2d.to_dense()``). The input requires
grad, so forward+backward computes the input gradient (as for a middle layer)
plus the weight (or values) gradient; gradients are reset (``.grad = None``)
inside every timed call, the same for both implementations.

Benchmarks are grouped per (layer, batch, sparsity): compare within a group.
See bench/README.md for how to run (timing needs --benchmark-enable or
--benchmark-only, because pyproject's addopts has --benchmark-disable). For the
full layer sweep and a whole ResNet-18 training step use
``python -m sparseprop.bench --conv`` / ``--resnet18``.
"""
from __future__ import annotations

import os

import pytest
import torch

import sparseprop

# (in_channels, out_channels, kernel, input size)
LAYERS = [(64, 64, 3, 32), (256, 256, 3, 8)]
SPARSITIES = [0.9, 0.95]
BATCHES = [32]
IMPLS = ["dense", "sparseprop"]
SEED = 0


def _layer_id(layer) -> str:
    cin, cout, k, size = layer
    return f"{k}x{k}-{cin}x{cout}-{size}px"


@pytest.fixture(scope="module", autouse=True)
def _same_threads():
    """torch and sparseprop use the same number of threads (SPARSEPROP_BENCH_THREADS or torch's)."""
    before = torch.get_num_threads()
    value = os.environ.get("SPARSEPROP_BENCH_THREADS")
    n = int(value) if value else before
    torch.set_num_threads(n)
    sparseprop.set_num_threads(n)
    yield
    torch.set_num_threads(before)
    sparseprop.set_num_threads(None)


@pytest.fixture(scope="module")
def conv_layers():
    """get(layer, sparsity) -> {impl: module}, built and cross-checked once per module."""
    cache = {}

    def get(layer, sparsity):
        key = (layer, sparsity)
        if key not in cache:
            cin, cout, k, size = layer
            sparse = sparseprop.SparseConv2d(cin, cout, k, padding=k // 2, bias=False,
                                             sparsity=sparsity,
                                             generator=torch.Generator().manual_seed(SEED))
            mods = {"dense": sparse.to_dense(), "sparseprop": sparse}
            _check_agree(mods, layer)
            cache[key] = mods
        return cache[key]

    return get


def _check_agree(mods, layer):
    """Same output and input gradient on a small batch (so we never time a broken path)."""
    cin, _, _, size = layer
    gen = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(2, cin, size, size, generator=gen)
    results = {}
    for name, m in mods.items():
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        y.backward(torch.ones_like(y))
        results[name] = (y.detach(), xi.grad)
        for p in m.parameters():
            p.grad = None
    for name, (y, gx) in results.items():
        torch.testing.assert_close(y, results["dense"][0], rtol=1e-4, atol=1e-4, msg=f"{name} output")
        torch.testing.assert_close(gx, results["dense"][1], rtol=1e-4, atol=1e-4, msg=f"{name} grad")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sparsity", SPARSITIES, ids=lambda s: f"s{s:g}")
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("layer", LAYERS, ids=_layer_id)
def test_conv_fwd_bwd(benchmark, conv_layers, layer, batch, sparsity, impl):
    module = conv_layers(layer, sparsity)[impl]
    cin, cout, _, size = layer
    gen = torch.Generator().manual_seed(SEED + batch)
    x = torch.randn(batch, cin, size, size, generator=gen).requires_grad_(True)
    grad = torch.randn(batch, cout, size, size, generator=gen)
    params = [p for p in module.parameters() if p.requires_grad]

    def fwd_bwd():
        x.grad = None
        for p in params:
            p.grad = None
        module(x).backward(grad)

    benchmark.group = f"conv {_layer_id(layer)} batch={batch} sparsity={sparsity:g} fwd+bwd"
    benchmark.extra_info.update(impl=impl, in_channels=cin, out_channels=cout, kernel=layer[2],
                                size=size, batch=batch, sparsity=sparsity, pass_="fwd+bwd",
                                threads=sparseprop.get_num_threads(), isa=sparseprop.get_isa())
    benchmark(fwd_bwd)
    assert x.grad is not None and x.grad.shape == x.shape
    assert all(p.grad is not None for p in params)


# ----------------------------------------------------------------------------------------
# quick checks of the conv benchmark tooling (run in the smoke run; skipped by
# --benchmark-only). They skip on an installed sparseprop older than bench_conv.
# ----------------------------------------------------------------------------------------
def test_models_sparsify_densify_agree():
    models = pytest.importorskip("sparseprop.models")
    import copy

    torch.manual_seed(SEED)
    base = models.resnet18_cifar(num_classes=10)
    assert len(models.conv_names(base)) == 20
    sparse = models.sparsify_convs(copy.deepcopy(base), 0.9)
    assert isinstance(sparse.conv1, torch.nn.Conv2d)  # the stem stays dense
    convs = [m for m in sparse.modules() if isinstance(m, sparseprop.SparseConv2d)]
    assert len(convs) == 19 and all(abs(m.sparsity - 0.9) < 1e-3 for m in convs)
    dense = sparseprop.densify(copy.deepcopy(sparse))
    assert not any(isinstance(m, sparseprop.SparseConv2d) for m in dense.modules())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), dense(x), rtol=1e-4, atol=1e-4)


def test_cli_conv_markdown(tmp_path, capsys):
    pytest.importorskip("sparseprop.bench_conv")
    from sparseprop import bench

    csv_path = tmp_path / "conv.csv"
    rc = bench.main(["--conv", "--layers", "8-16-k3-s2@6,dw128", "--batch", "2", "--sparsity", "0.5",
                     "--reps", "1", "--warmup", "0", "--markdown", "--csv", str(csv_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| layer | batch | sparsity |" in out and "| 3x3/2 8>16 @6 | 2 | 0.5 |" in out
    assert "| dw3x3 128 @16 | 2 | 0.5 |" in out
    lines = csv_path.read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("layer,in_channels,out_channels")


def test_cli_resnet18(capsys):
    pytest.importorskip("sparseprop.bench_conv")
    from sparseprop import bench

    rc = bench.main(["--resnet18", "--batch", "2", "--sparsity", "0.9", "--reps", "1",
                     "--warmup", "0", "--profile-steps", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "dense step ms" in out and "outside-conv %" in out and "sparse 0.9" in out
