"""pytest-benchmark suites: dense nn.Conv2d vs sparseprop.SparseConv2d, forward+backward.

Two ResNet-18 (CIFAR) layers, 3x3 64->64 on 32x32 and 3x3 256->256 on 8x8 (stride
1, padding 1, no bias), at batch 32 and sparsity 0.9 and 0.95. The dense layer is
the sparse one's masked twin (``SparseConv2d.to_dense()``). The input requires
grad, so forward+backward computes the input gradient (as for a middle layer)
plus the weight (or values) gradient; gradients are reset (``.grad = None``)
inside every timed call, the same for both implementations. The layers, the
agreement check and the timed body are those of ``python -m sparseprop.bench --conv``
(``sparseprop.benchmarks.conv_layers`` presets ``c64`` and ``c256``,
``sparseprop.benchmarks.checks.max_rel_error``, ``sparseprop._timing.pass_items``).

Benchmarks are grouped per (layer, batch, sparsity): compare within a group.
See bench/README.md for how to run (timing needs --benchmark-enable or
--benchmark-only, because pyproject's addopts has --benchmark-disable). For the
full layer sweep and a whole ResNet-18 training step use
``python -m sparseprop.bench --conv`` / ``--resnet18``.
"""
from __future__ import annotations

import pytest
import torch

import sparseprop
from sparseprop._timing import as_call, pass_items
from sparseprop.benchmarks.checks import max_rel_error
from sparseprop.benchmarks.conv_layers import PRESET_LAYERS

LAYERS = [PRESET_LAYERS["c64"], PRESET_LAYERS["c256"]]
SPARSITIES = [0.9, 0.95]
BATCHES = [32]
IMPLS = ["dense", "sparseprop"]
SEED = 0


def _layer_id(layer) -> str:
    return f"{layer.kernel}x{layer.kernel}-{layer.in_channels}x{layer.out_channels}-{layer.size}px"


@pytest.fixture(scope="module")
def conv_layers():
    """get(layer, sparsity) -> {impl: module}, built and cross-checked once per module."""
    cache = {}

    def get(layer, sparsity):
        key = (layer, sparsity)
        if key not in cache:
            sparse = layer.make(sparsity, torch.Generator().manual_seed(SEED))
            mods = {"dense": sparse.to_dense(), "sparseprop": sparse}
            _check_agree(mods, layer)
            cache[key] = mods
        return cache[key]

    return get


def _check_agree(mods, layer):
    """Same output, input and weight gradients on a small batch (so we never time a broken path)."""
    gen = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(2, layer.in_channels, layer.size, layer.size, generator=gen).requires_grad_(True)
    grad = torch.randn(2, layer.out_channels, layer.out_size, layer.out_size, generator=gen)
    err = max_rel_error(mods["dense"], mods["sparseprop"], x, grad)
    assert err <= 1e-4, f"{layer.label}: dense and sparse differ by {err:.3g} (relative)"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sparsity", SPARSITIES, ids=lambda s: f"s{s:g}")
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("layer", LAYERS, ids=_layer_id)
def test_conv_fwd_bwd(benchmark, conv_layers, layer, batch, sparsity, impl):
    module = conv_layers(layer, sparsity)[impl]
    gen = torch.Generator().manual_seed(SEED + batch)
    x = torch.randn(batch, layer.in_channels, layer.size, layer.size, generator=gen).requires_grad_(True)
    grad = torch.randn(batch, layer.out_channels, layer.out_size, layer.out_size, generator=gen)
    params = [p for p in module.parameters() if p.requires_grad]

    benchmark.group = f"conv {_layer_id(layer)} batch={batch} sparsity={sparsity:g} fwd+bwd"
    benchmark.extra_info.update(impl=impl, in_channels=layer.in_channels,
                                out_channels=layer.out_channels, kernel=layer.kernel,
                                size=layer.size, batch=batch, sparsity=sparsity, pass_="fwd+bwd",
                                threads=sparseprop.get_num_threads(), isa=sparseprop.get_isa())
    benchmark(as_call(pass_items(module, x, grad).fwdbwd))
    assert x.grad is not None and x.grad.shape == x.shape
    assert all(p.grad is not None for p in params)


# ----------------------------------------------------------------------------------------
# quick checks of the conv benchmark tooling (run in the smoke run; skipped by
# --benchmark-only).
# ----------------------------------------------------------------------------------------
def test_models_sparsify_densify_agree():
    import copy

    from sparseprop.benchmarks import resnet_models as models

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
    from sparseprop import bench

    rc = bench.main(["--resnet18", "--batch", "2", "--sparsity", "0.9", "--reps", "1",
                     "--warmup", "0", "--profile-steps", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "dense step ms" in out and "outside-conv %" in out and "sparse 0.9" in out
