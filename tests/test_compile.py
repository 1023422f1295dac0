"""torch.compile over models with sparse layers.

The sparse autograd Functions call the native kernels through numpy, which Dynamo cannot
trace: every sparse layer is a graph break and runs eagerly, the dense code between them
is compiled. The default tests use ``backend="aot_eager"`` (Dynamo + AOTAutograd, no
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


def test_sparse_layers_graph_break():
    net = _model()
    explanation = torch._dynamo.explain(net)(torch.randn(2, 3, 6, 6))
    assert explanation.graph_break_count >= 2  # (at least) one per sparse layer
    assert explanation.graph_count >= 2


@pytest.mark.skipif(os.environ.get("SPARSEPROP_TEST_INDUCTOR") != "1",
                    reason="Inductor compiles C++ (~30 s here); set SPARSEPROP_TEST_INDUCTOR=1")
def test_compile_matches_eager_inductor():
    _train_compiled_vs_eager("inductor")
