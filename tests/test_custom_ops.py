"""SparseLinear through torch.library custom ops: fullgraph compile, export, ONNX."""
from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

import sparseprop
from sparseprop import custom_ops

from compile_helpers import assert_step_matches

pytestmark = pytest.mark.skipif(not custom_ops.AVAILABLE, reason="torch.library.custom_op needs torch >= 2.4")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(sparseprop.SparseLinear(16, 32, sparsity=0.8), nn.ReLU(),
                         sparseprop.SparseLinear(32, 24, sparsity=0.7), nn.GELU(),
                         nn.Linear(24, 8), sparseprop.SparseLinear(8, 4, sparsity=0.5, bias=False))


def test_fullgraph_zero_graph_breaks():
    net = _mlp()
    explanation = torch._dynamo.explain(net)(torch.randn(5, 16))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("shape", [(5, 16), (2, 3, 16), (1, 16)])
def test_fullgraph_compiled_matches_eager(isa, shape):
    net = _mlp()
    ref = copy.deepcopy(net)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    assert_step_matches(net, compiled, ref, torch.randn(*shape, generator=torch.Generator().manual_seed(1)))


def test_tiny_bert_fullgraph():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32,
                                  max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    sparseprop.sparsify(model, sparsity=0.8)
    assert any(isinstance(m, sparseprop.SparseLinear) for m in model.modules())
    ids = torch.randint(0, 50, (2, 7))
    explanation = torch._dynamo.explain(model)(ids)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    ref = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out, out_ref = compiled(ids).last_hidden_state, ref(ids).last_hidden_state
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    out.square().mean().backward()
    out_ref.square().mean().backward()
    for (name, a), b in zip(model.named_parameters(), ref.parameters()):
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.skipif(os.environ.get("SPARSEPROP_TEST_INDUCTOR") != "1",
                    reason="Inductor's C++ compile takes ~30 s here; SPARSEPROP_TEST_INDUCTOR=1 runs it")
def test_fullgraph_inductor_matches_eager():
    net = _mlp()
    ref = copy.deepcopy(net)
    compiled = torch.compile(net, fullgraph=True)
    assert_step_matches(net, compiled, ref, torch.randn(6, 16, generator=torch.Generator().manual_seed(2)))


def test_export_save_load_round_trip(tmp_path):
    net = _mlp().eval()
    x = torch.randn(3, 16)
    ep = torch.export.export(net, (x,))
    path = tmp_path / "mlp.pt2"
    torch.export.save(ep, str(path))
    loaded = torch.export.load(str(path)).module()
    torch.testing.assert_close(loaded(x), net(x), rtol=1e-5, atol=1e-6)
    other = torch.randn(3, 16)  # the output is computed, not baked in
    torch.testing.assert_close(loaded(other), net(other), rtol=1e-5, atol=1e-6)


def test_ops_match_dense():
    p = sparseprop.CSRPattern.random(9, 7, 0.6)
    v = torch.randn(p.nnz)
    b = torch.randn(9)
    x = torch.randn(4, 7)
    w = p.to_dense(v)
    yt = torch.ops.sparseprop.linear(x, v, b, p.indptr, p.indices, 9)
    torch.testing.assert_close(yt.t(), x @ w.t() + b)
    gyt = torch.randn(9, 4)
    torch.testing.assert_close(torch.ops.sparseprop.linear_grad_input(gyt, v, p.indptr, p.indices, 7),
                               gyt.t() @ w)
    torch.testing.assert_close(torch.ops.sparseprop.linear_grad_values(gyt, x, p.indptr, p.indices),
                               p.gather(gyt @ x))


def test_opcheck():
    p = sparseprop.CSRPattern.random(6, 5, 0.5)
    v = torch.randn(p.nnz, requires_grad=True)
    x = torch.randn(3, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.sparseprop.linear.default, (x, v, None, p.indptr, p.indices, 6),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
