"""dtypes of SparseLinear: float64 (gradcheck), bf16 autocast, bf16/fp16 inputs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import sparseprop
from sparseprop.csr import CSRPattern
from sparseprop.functional import sparse_linear


@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_float64(bias):
    p = CSRPattern.random(5, 7, 0.5, generator=torch.Generator().manual_seed(0))
    v = torch.randn(p.nnz, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True) if bias else None
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, v, b: sparse_linear(x, p, v, b), (x, v, b))


def test_gradcheck_float64_module_through_ops():
    layer = sparseprop.SparseLinear(6, 4, sparsity=0.5)
    p = layer.pattern
    v = layer.values.detach().double().requires_grad_()
    b = layer.bias.detach().double().requires_grad_()
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    fn = lambda x, v, b: torch.ops.sparseprop.linear(x.reshape(-1, 6), v, b, p.indptr, p.indices, 4)
    assert torch.autograd.gradcheck(fn, (x, v, b))


def test_float64_matches_dense():
    layer = sparseprop.SparseLinear(9, 5, sparsity=0.6)
    x = torch.randn(4, 9, dtype=torch.float64)
    out = sparse_linear(x, layer.pattern, layer.values.double(), layer.bias.double())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, x @ layer.weight.double().t() + layer.bias.double())


def _chain(sparse_first):
    torch.manual_seed(0)
    s = sparseprop.SparseLinear(16, 16, sparsity=0.8)
    d = nn.Linear(16, 16)
    return nn.Sequential(s, nn.ReLU(), d) if sparse_first else nn.Sequential(d, nn.ReLU(), s)


@pytest.mark.parametrize("sparse_first", [True, False])
def test_autocast_bf16_chain(sparse_first):
    net = _chain(sparse_first)
    x = torch.randn(8, 16)
    ref = net(x)
    xa = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(xa)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=3e-2)
    out.float().sum().backward()
    assert xa.grad is not None and xa.grad.dtype == torch.float32
    assert all(p.grad is not None for p in net.parameters())


def test_sparse_layer_output_is_autocast_dtype():
    layer = sparseprop.SparseLinear(8, 4, sparsity=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(2, 8)).dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_computed_in_float32(dtype):
    layer = sparseprop.SparseLinear(8, 4, sparsity=0.5)
    x = torch.randn(3, 8).to(dtype)
    out = layer(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out, (x.float() @ layer.weight.t() + layer.bias).to(dtype))
