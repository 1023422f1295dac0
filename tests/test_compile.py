"""torch.compile over models with sparse layers (convolutions and linear layers).

Under tracing both layers are torch.library custom ops (custom_ops.py, conv/ops.py), so
a model compiles into one graph with the sparse layers as opaque ops. The default tests use ``backend="aot_eager"`` (Dynamo + AOTAutograd, no
code generation): Inductor's C++ compilation of the same model takes ~30 s on the
2-core test machine. Set SPARSEPROP_TEST_INDUCTOR=1 to also run it with Inductor.
"""
from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch
from torch import nn

import sparseprop

from compile_helpers import assert_step_matches

dynamo = pytest.importorskip("torch._dynamo")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Dynamo does not know how to trace ... pybind"
        yield
    torch._dynamo.reset()


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        sparseprop.SparseConv2d(3, 4, 3, padding=1, sparsity=0.5), nn.ReLU(), nn.Flatten(),
        sparseprop.SparseLinear(4 * 6 * 6, 32, sparsity=0.9), nn.ReLU(), nn.Linear(32, 4))


def _train_compiled_vs_eager(backend):
    net = _model()
    ref = copy.deepcopy(net)
    compiled = torch.compile(net, backend=backend)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(5, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    for step in range(4):
        if step == 2:  # a pattern change with a new nnz: recompiles, keeps training
            mask = torch.rand(32, 144, generator=torch.Generator().manual_seed(2)) < 0.2
            sparseprop.apply_masks(net, {"3": mask}, optimizer=opt)
            sparseprop.apply_masks(ref, {"3": mask}, optimizer=opt_ref)
        opt.zero_grad()
        opt_ref.zero_grad()
        y, y_ref = compiled(x), ref(x)  # the previous step's outputs are still alive
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
        y.square().sum().backward()
        y_ref.square().sum().backward()
        opt.step()
        opt_ref.step()
    assert net[3].nnz == int(mask.sum())
    for (name, a), b in zip(net.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    net.eval()
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), ref(x), rtol=1e-5, atol=1e-6)


def test_compile_matches_eager_aot_eager():
    _train_compiled_vs_eager("aot_eager")


def test_no_graph_breaks():
    net = _model()
    explanation = torch._dynamo.explain(net)(torch.randn(2, 3, 6, 6))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_fullgraph_conv_model_matches_eager():
    net = _model()
    ref = copy.deepcopy(net)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    assert_step_matches(net, compiled, ref, torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(3)),
                        atol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(stride=2, padding=1, groups=2),
                                    dict(padding="same", padding_mode="circular", bias=False)])
def test_conv_op_variants_match_eager(kwargs):
    torch.manual_seed(0)
    conv = sparseprop.SparseConv2d(4, 6, 3, sparsity=0.6, **kwargs)
    x = torch.randn(3, 4, 7, 7)
    compiled = torch.compile(conv, fullgraph=True, backend="aot_eager")
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, y_ref = compiled(xa), conv.to_dense()(xb)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y_ref)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)


def test_export_conv_model_round_trip(tmp_path):
    net = _model().eval()
    x = torch.randn(2, 3, 6, 6)
    ep = torch.export.export(net, (x,))
    torch.export.save(ep, str(tmp_path / "net.pt2"))
    loaded = torch.export.load(str(tmp_path / "net.pt2")).module()
    other = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(other), net(other), rtol=1e-5, atol=1e-6)


def test_conv_opcheck():
    from sparseprop.conv import ops as conv_ops

    conv = sparseprop.SparseConv2d(2, 3, 3, padding=1, sparsity=0.5)
    x = torch.randn(2, 2, 5, 5, requires_grad=True)
    v = conv.values.detach().clone().requires_grad_()
    torch.library.opcheck(torch.ops.sparseprop.conv2d.default,
                          (x, v, conv.bias.detach(), conv.indptr, conv.indices, conv._spec_key),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
    assert conv_ops.AVAILABLE


@pytest.mark.skipif(os.environ.get("SPARSEPROP_TEST_INDUCTOR") != "1",
                    reason="Inductor compiles C++ (~30 s here); set SPARSEPROP_TEST_INDUCTOR=1")
def test_compile_matches_eager_inductor():
    _train_compiled_vs_eager("inductor")
