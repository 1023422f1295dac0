"""ONNX export of models with sparse layers: each sparse layer exports as the dense op
(Gemm/MatMul, Conv) on its weight, materialised in the graph from ``values`` (a
scatter at constant positions), with both the legacy and the dynamo exporter. The
graph computes from its input: never the example output baked in as a constant."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import sparseprop

onnx = pytest.importorskip("onnx")


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(sparseprop.SparseLinear(8, 16, sparsity=0.8), nn.ReLU(),
                         sparseprop.SparseLinear(16, 4, sparsity=0.5)).eval()


def _convnet():
    torch.manual_seed(0)
    return nn.Sequential(sparseprop.SparseConv2d(3, 6, 3, padding=1, sparsity=0.6), nn.ReLU(),
                         sparseprop.SparseConv2d(6, 4, 3, stride=2, padding=1, padding_mode="reflect",
                                                 sparsity=0.5),
                         nn.Flatten(), sparseprop.SparseLinear(4 * 3 * 3, 5, sparsity=0.7)).eval()


def _export(net, x, path, dynamo):
    if dynamo:
        pytest.importorskip("onnxscript")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), dynamo=dynamo, input_names=["x"])
    return onnx.load(str(path))


def _run(proto, x):
    from onnx.reference import ReferenceEvaluator

    feed = {proto.graph.input[0].name: x.numpy()}
    return torch.from_numpy(ReferenceEvaluator(proto).run(None, feed)[0])


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("build, shape, dense_op", [(_mlp, (3, 8), {"Gemm", "MatMul"}),
                                                    (_convnet, (2, 3, 6, 6), {"Conv"})],
                         ids=["mlp", "convnet"])
def test_exports_as_dense_ops(tmp_path, dynamo, build, shape, dense_op):
    net = build()
    x = torch.randn(*shape)
    proto = _export(net, x, tmp_path / "model.onnx", dynamo)
    assert [i.name for i in proto.graph.input] == ["x"]  # computes from its input
    ops = {n.op_type for n in proto.graph.node}
    assert ops & dense_op, ops
    assert not any(n.domain.startswith("sparseprop") for n in proto.graph.node)
    other = torch.randn(*shape)  # not the example input: the output is not baked in
    with torch.no_grad():
        ref = net(other)
    torch.testing.assert_close(_run(proto, other), ref, rtol=1e-4, atol=1e-5)


def test_export_follows_trained_values(tmp_path):
    """The exported weight is the layer's current one (values changed after a pattern
    change), not a stale copy."""
    net = _mlp()
    mask = torch.rand(16, 8, generator=torch.Generator().manual_seed(3)) < 0.3
    sparseprop.apply_masks(net, {"0": mask})
    with torch.no_grad():
        net[0].values.normal_()
    x = torch.randn(2, 8)
    proto = _export(net, x, tmp_path / "mlp.onnx", dynamo=False)
    with torch.no_grad():
        torch.testing.assert_close(_run(proto, x), net(x), rtol=1e-4, atol=1e-5)
