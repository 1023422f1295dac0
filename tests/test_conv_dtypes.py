"""dtypes of SparseConv2d: float64 (gradcheck in input, values and bias), bf16/fp16
inputs and bf16 autocast chains; the float32 result of the same layers is the oracle."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

import sparseprop

CONFIGS = [dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2, padding=1, groups=2),
           dict(kernel_size=(2, 3), padding="same", padding_mode="reflect", bias=False),
           dict(kernel_size=1, stride=2)]


@pytest.mark.parametrize("kwargs", CONFIGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
@pytest.mark.parametrize("unbatched", [False, True])
def test_gradcheck_float64(kwargs, unbatched):
    torch.manual_seed(0)
    conv = sparseprop.SparseConv2d(2, 4, sparsity=0.5, **kwargs).double()
    v = conv.values.detach().clone().requires_grad_()
    b = None if conv.bias is None else conv.bias.detach().clone().requires_grad_()
    shape = (2, 4, 5) if unbatched else (2, 2, 4, 5)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    def fn(x, v, b):
        params = {"values": v} if b is None else {"values": v, "bias": b}
        return functional_call(conv, params, (x,))

    assert torch.autograd.gradcheck(fn, (x, v, b))


def test_float64_matches_dense():
    torch.manual_seed(0)
    conv = sparseprop.SparseConv2d(3, 5, 3, stride=2, padding=1, sparsity=0.7)
    dense = conv.to_dense().double()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    out = conv.double()(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, dense(x))


def test_float64_does_not_mix():
    conv = sparseprop.SparseConv2d(3, 5, 3, sparsity=0.5).double()
    with pytest.raises(TypeError, match="must all be float64"):
        conv(torch.randn(1, 3, 6, 6))


def _chain(sparse_first):
    torch.manual_seed(0)
    s = sparseprop.SparseConv2d(4, 4, 3, padding=1, sparsity=0.7)
    d = nn.Conv2d(4, 4, 3, padding=1)
    return nn.Sequential(s, nn.ReLU(), d) if sparse_first else nn.Sequential(d, nn.ReLU(), s)


@pytest.mark.parametrize("sparse_first", [True, False], ids=["sparse->dense", "dense->sparse"])
def test_autocast_bf16_chain(sparse_first):
    net = _chain(sparse_first)
    x = torch.randn(2, 4, 8, 8)
    ref = net(x)
    ref.float().square().sum().backward()
    ref_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2)
    out.float().square().sum().backward()
    for p, g in zip(net.parameters(), ref_grads):
        assert p.grad is not None and p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, g, rtol=5e-2, atol=5e-2 * g.abs().max().item())


def test_sparse_output_is_autocast_dtype():
    conv = sparseprop.SparseConv2d(2, 3, 3, sparsity=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(torch.randn(1, 2, 5, 5)).dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_computed_in_float32(dtype):
    conv = sparseprop.SparseConv2d(2, 3, 3, padding=1, sparsity=0.5)
    x = torch.randn(2, 2, 5, 5).to(dtype)
    out = conv(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out, conv.to_dense()(x.float()).to(dtype))
