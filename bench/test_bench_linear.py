"""pytest-benchmark suites: dense nn.Linear vs torch.sparse CSR vs sparseprop.SparseLinear.

All three hold the same masked weights and bias. The input requires grad, so the
forward+backward cases compute the input gradient (as for a middle layer) plus
the weight (or values) and bias gradients; gradients are reset (``.grad = None``)
inside every timed call, which costs well under a microsecond and is the same for
every implementation.

torch.sparse CSR: ``torch.sparse.mm(W_csr, x.T).T + b`` supports backward on the
CPU, and its weight gradient is itself sparse CSR with W's pattern (a masked
gradient, like SparseLinear's), so it is benchmarked for forward and
forward+backward. (``F.linear(x, W_csr)`` also runs backward but returns a
*dense* weight gradient, which would not be a like-for-like comparison.)

The layers and the timed bodies are the ``python -m sparseprop.bench`` table's own
(``sparseprop.benchmarks.linear.make_layers``, ``sparseprop._timing.pass_items``).

Benchmarks are grouped per (shape, batch, sparsity, pass): compare within a group.
See bench/README.md for how to run (timing needs --benchmark-enable or
--benchmark-only, because pyproject's addopts has --benchmark-disable).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import sparseprop
from sparseprop._timing import as_call, pass_items
from sparseprop.benchmarks.linear import make_layers

SHAPES = [(1024, 1024), (4096, 4096)]  # (in_features, out_features)
SPARSITIES = [0.9, 0.95]
BATCHES = [16, 256]
PASSES = ["fwd", "fwd+bwd"]
IMPLS = ["dense", "torch_csr", "sparseprop"]
SEED = 0

# torch warns once that sparse CSR support is "in beta"; that is not news here.
pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


class TorchCSRLinear(nn.Module):
    """y = x W^T + b with W a torch.sparse_csr Parameter (torch's own sparse path)."""

    def __init__(self, dense: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(dense.weight.detach().to_sparse_csr())
        self.bias = nn.Parameter(dense.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sparse.mm(self.weight, x.t()).t() + self.bias


@pytest.fixture(scope="session")
def layers():
    """get(shape, sparsity) -> {impl: module}; built once per session (large patterns take seconds)."""
    cache = {}

    def get(shape, sparsity):
        key = (shape, sparsity)
        if key not in cache:
            sparse, dense = make_layers(shape[0], shape[1], sparsity, seed=SEED)
            mods = {"dense": dense, "torch_csr": TorchCSRLinear(dense), "sparseprop": sparse}
            _check_agree(mods, shape[0])
            cache[key] = mods
        return cache[key]

    return get


def _check_agree(mods, in_features):
    """All implementations give the same output on a small batch (so we never time a broken path)."""
    x = torch.randn(4, in_features, generator=torch.Generator().manual_seed(SEED + 1))
    with torch.no_grad():
        ref = mods["dense"](x)
        for name, m in mods.items():
            torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-4, msg=f"{name} disagrees")


def _body(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, pass_: str):
    """The timed call: the forward, or gradients reset then forward+backward in one call."""
    items = pass_items(module, x, grad)
    return items.fwd if pass_ == "fwd" else as_call(items.fwdbwd)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("sparsity", SPARSITIES, ids=lambda s: f"s{s:g}")
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_linear(benchmark, layers, shape, batch, sparsity, pass_, impl):
    module = layers(shape, sparsity)[impl]
    gen = torch.Generator().manual_seed(SEED + batch)
    x = torch.randn(batch, shape[0], generator=gen).requires_grad_(True)
    grad = torch.randn(batch, shape[1], generator=gen)

    benchmark.group = f"{shape[0]}x{shape[1]} batch={batch} sparsity={sparsity:g} {pass_}"
    benchmark.extra_info.update(impl=impl, in_features=shape[0], out_features=shape[1],
                                batch=batch, sparsity=sparsity, pass_=pass_,
                                threads=sparseprop.get_num_threads(), isa=sparseprop.get_isa())
    out = benchmark(_body(module, x, grad, pass_))
    if pass_ == "fwd":
        assert out.shape == (batch, shape[1])
    else:
        assert x.grad is not None and x.grad.shape == x.shape
