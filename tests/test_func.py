"""torch.func over SparseLinear: grad, vmap and per-sample gradients vmap(grad(...))."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import sparseprop
from sparseprop import custom_ops

pytestmark = pytest.mark.skipif(not custom_ops.AVAILABLE, reason="needs torch >= 2.4")


def _pair():
    torch.manual_seed(0)
    net = nn.Sequential(sparseprop.SparseLinear(12, 20, sparsity=0.8), nn.Tanh(),
                        sparseprop.SparseLinear(20, 3, sparsity=0.6))
    dense = nn.Sequential(net[0].to_dense(), nn.Tanh(), net[2].to_dense())
    return net, dense


def _params(net):
    return {k: v.detach() for k, v in net.named_parameters()}


def test_grad_matches_dense_masked(isa):
    net, dense = _pair()
    x = torch.randn(6, 12)
    g = grad(lambda p: functional_call(net, p, (x,)).square().sum())(_params(net))
    dense(x).square().sum().backward()
    for i in (0, 2):
        torch.testing.assert_close(g[f"{i}.values"], net[i].pattern.gather(dense[i].weight.grad),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g[f"{i}.bias"], dense[i].bias.grad, rtol=1e-5, atol=1e-5)


def test_vmap_matches_loop(isa):
    net, _ = _pair()
    xs = torch.randn(5, 4, 12)
    torch.testing.assert_close(vmap(net)(xs), torch.stack([net(x) for x in xs]), rtol=1e-5, atol=1e-6)


def test_vmap_over_weights():
    net, _ = _pair()
    layer = net[0]
    stacked = torch.stack([layer.values.detach() * s for s in (1.0, -0.5, 2.0)])
    x = torch.randn(4, 12)
    out = vmap(lambda v: functional_call(layer, {"values": v, "bias": layer.bias}, (x,)))(stacked)
    ref = torch.stack([functional_call(layer, {"values": v, "bias": layer.bias}, (x,)) for v in stacked])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_per_sample_gradients(isa):
    net, dense = _pair()
    x, target = torch.randn(7, 12), torch.randn(7, 3)

    def loss(model, p, xi, ti):
        return (functional_call(model, p, (xi[None],)) - ti).square().sum()

    per_sample = vmap(grad(lambda p, xi, ti: loss(net, p, xi, ti)), in_dims=(None, 0, 0))(_params(net), x, target)
    dense_params = _params(dense)
    for n in range(7):  # a loop over samples through the sparse model itself
        g = grad(lambda p: loss(net, p, x[n], target[n]))(_params(net))
        for k, v in g.items():
            torch.testing.assert_close(per_sample[k][n], v, rtol=1e-5, atol=1e-6)
    for n in range(7):  # and the dense masked model
        g = grad(lambda p: loss(dense, p, x[n], target[n]))(dense_params)
        for i in (0, 2):
            torch.testing.assert_close(per_sample[f"{i}.values"][n], net[i].pattern.gather(g[f"{i}.weight"]),
                                       rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(per_sample[f"{i}.bias"][n], g[f"{i}.bias"], rtol=1e-5, atol=1e-5)
