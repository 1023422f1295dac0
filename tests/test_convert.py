"""Whole-model conversion: sparsify (selection, prune masks, magnitude pruning, timing
decisions), densify and summary."""
from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import sparseprop
from sparseprop import SparseConv2d, SparseLinear
from sparseprop import convert as convert_mod
from sparseprop._sparse_module import SparseWeightModule


class Net(nn.Module):
    """conv -> BN -> ReLU -> conv -> flatten -> fc1 -> ReLU -> fc2 (8x8 inputs)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        self.fc1 = nn.Linear(8 * 8 * 8, 32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = self.conv2(x).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def _x(n=4):
    return torch.randn(n, 3, 8, 8)


def _zero_out(layer: nn.Module, sparsity: float) -> torch.Tensor:
    """Set a random ``sparsity`` fraction of ``layer.weight`` to exactly 0; returns the mask."""
    with torch.no_grad():
        keep = torch.rand_like(layer.weight) >= sparsity
        layer.weight.mul_(keep)
    return keep


def _outputs(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def _rows(report):
    return {r["layer"]: r for r in report}


# --------------------------------------------------------------------------------------
# sparsify: patterns
# --------------------------------------------------------------------------------------
def test_sparsify_keeps_existing_zeros_and_outputs():
    net = Net().eval()
    masks = {"conv2": _zero_out(net.conv2, 0.8), "fc1": _zero_out(net.fc1, 0.9)}
    _zero_out(net.fc2, 0.3)  # below min_sparsity: stays dense
    x = _x()
    expected = _outputs(net, x)
    report = sparseprop.sparsify(net, return_report=True)
    assert report.model is net
    assert isinstance(net.conv2, SparseConv2d) and isinstance(net.fc1, SparseLinear)
    assert type(net.conv1) is nn.Conv2d and type(net.fc2) is nn.Linear
    for name, mask in masks.items():
        layer = getattr(net, name)
        assert torch.equal(layer.weight.detach() != 0, mask)
    torch.testing.assert_close(_outputs(net, x), expected, rtol=1e-5, atol=1e-5)
    rows = _rows(report)
    assert list(rows) == ["conv1", "conv2", "fc1", "fc2"]
    assert rows["fc1"]["decision"] == "sparse" and rows["fc2"]["decision"] == "dense"
    assert rows["fc1"]["nnz"] == int(masks["fc1"].sum())
    assert rows["fc1"]["shape"] == (32, 512) and rows["conv2"]["shape"] == (8, 4, 3, 3)
    assert "min_sparsity" in rows["fc2"]["reason"] and rows["fc2"]["sparsity"] < 0.5
    assert report.converted == ["conv2", "fc1"] and report.kept_dense == ["conv1", "fc2"]
    text = str(report)
    assert "fc1" in text and "decision" in text and "2 of 4" in text


def test_sparsify_magnitude_pruning():
    net = Net()
    dense = copy.deepcopy(net)
    report = sparseprop.sparsify(net, 0.9, return_report=True)
    assert all(r["decision"] == "sparse" for r in report)
    for name in ("conv1", "conv2", "fc1", "fc2"):
        layer, old = getattr(net, name), getattr(dense, name)
        numel = old.weight.numel()
        assert layer.nnz == round(0.1 * numel)
        # the survivors are the largest magnitudes
        kept = old.weight.detach().abs()[layer.weight.detach() != 0]
        dropped = old.weight.detach().abs()[layer.weight.detach() == 0]
        assert kept.min() >= dropped.max()
        with torch.no_grad():
            old.weight.mul_(layer.weight != 0)
    x = _x()
    torch.testing.assert_close(_outputs(net, x), _outputs(dense, x), rtol=1e-5, atol=1e-5)


def test_sparsify_sparsity_keeps_existing_zeros_too():
    """sparsity=s prunes among the nonzeros: a layer already sparser keeps its own zeros."""
    net = Net()
    mask = _zero_out(net.fc1, 0.97)
    sparseprop.sparsify(net, 0.9, names=["fc1", "fc2"])
    assert torch.equal(net.fc1.weight.detach() != 0, mask)
    assert net.fc2.nnz == round(0.1 * 32 * 5)


def test_sparsify_torch_prune_masks():
    net = Net()
    prune.l1_unstructured(net.fc1, "weight", amount=0.8)
    prune.random_unstructured(net.conv2, "weight", amount=0.75)
    prune.l1_unstructured(net.fc2, "bias", amount=0.4)  # pruned bias only: weight dense
    prune.global_unstructured([(net.conv1, "weight")], prune.L1Unstructured, amount=0.6)
    # a weight that is 0 inside the mask must stay a trainable position
    with torch.no_grad():
        idx = net.fc1.weight_mask.nonzero()[0]
        net.fc1.weight_orig[tuple(idx)] = 0.0
    masks = {n: getattr(net, n).weight_mask.clone() for n in ("fc1", "conv2", "conv1")}
    x = _x()
    net.train()
    net(x).sum().backward()  # pruned weights are now non-leaf tensors (deepcopy trap)
    expected = _outputs(net, x)
    original = copy.deepcopy(net.state_dict())
    report = sparseprop.sparsify(net, inplace=False, return_report=True)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in original.items())  # untouched
    assert hasattr(net.fc1, "weight_orig")
    model = report.model
    for name, mask in masks.items():
        layer = getattr(model, name)
        assert isinstance(layer, (SparseLinear, SparseConv2d)), name
        assert torch.equal(layer.pattern.mask().view(mask.shape), mask.bool()), name
        assert not hasattr(layer, "weight_orig") and not hasattr(layer, "weight_mask")
        assert not layer._forward_pre_hooks
        assert _rows(report)[name]["reason"] == "pruned mask"
    assert model.fc1.nnz == int(masks["fc1"].sum())  # including the zero weight
    assert type(model.fc2) is nn.Linear  # its weight has no zeros
    torch.testing.assert_close(_outputs(model, x), expected, rtol=1e-5, atol=1e-5)


def test_sparsify_pruned_bias_is_folded():
    lin = nn.Linear(20, 10)
    prune.l1_unstructured(lin, "weight", amount=0.9)
    prune.l1_unstructured(lin, "bias", amount=0.5)
    model = nn.Sequential(lin)
    x = torch.randn(3, 20)
    expected = model(x).detach()
    sparseprop.sparsify(model)
    assert isinstance(model[0], SparseLinear)
    assert int((model[0].bias == 0).sum()) == 5
    torch.testing.assert_close(model(x).detach(), expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------
# sparsify: selection and options
# --------------------------------------------------------------------------------------
def test_selection_by_type_names_and_regex():
    report = sparseprop.sparsify(Net(), 0.9, types=(nn.Linear,), inplace=False, return_report=True)
    assert report.converted == ["fc1", "fc2"] and len(report) == 2
    report = sparseprop.sparsify(Net(), 0.9, types=nn.Conv2d, inplace=False, return_report=True)
    assert report.converted == ["conv1", "conv2"]
    report = sparseprop.sparsify(Net(), 0.9, names=["fc2", "conv1"], inplace=False, return_report=True)
    assert report.converted == ["conv1", "fc2"]
    report = sparseprop.sparsify(Net(), 0.9, names=r"conv\d", inplace=False, return_report=True)
    assert report.converted == ["conv1", "conv2"]
    report = sparseprop.sparsify(Net(), 0.9, names=re.compile("fc"), inplace=False, return_report=True)
    assert report.converted == []  # fullmatch: "fc" names no layer
    report = sparseprop.sparsify(Net(), 0.9, names=r"fc.*", types=(nn.Linear,), inplace=False, return_report=True)
    assert report.converted == ["fc1", "fc2"]


def test_selection_errors():
    with pytest.raises(ValueError, match="fc9"):
        sparseprop.sparsify(Net(), 0.9, names=["fc1", "fc9"])
    with pytest.raises(ValueError, match="bn.*BatchNorm2d"):
        sparseprop.sparsify(Net(), 0.9, names=["bn"])
    with pytest.raises(TypeError, match="types"):
        sparseprop.sparsify(Net(), 0.9, types=(nn.BatchNorm2d,))
    with pytest.raises(ValueError, match="sparsity"):
        sparseprop.sparsify(Net(), 1.5)
    with pytest.raises(ValueError, match="min_sparsity"):
        sparseprop.sparsify(Net(), 0.9, min_sparsity=-0.1)
    with pytest.raises(ValueError, match="sample_input"):
        sparseprop.sparsify(Net(), 0.9, only_if_faster=True)
    with pytest.raises(ValueError, match="only_if_faster"):
        sparseprop.sparsify(Net(), 0.9, sample_input=_x())


def test_min_sparsity():
    report = sparseprop.sparsify(Net(), 0.3, inplace=False, return_report=True)
    assert report.converted == []
    report = sparseprop.sparsify(Net(), 0.3, min_sparsity=0.3, inplace=False, return_report=True)
    assert len(report.converted) == 4
    report = sparseprop.sparsify(Net(), 0.95, min_sparsity=0.96, inplace=False, return_report=True)
    assert report.converted == []


def test_inplace_false_leaves_model_untouched():
    net = Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modules = dict(net.named_modules())
    report = sparseprop.sparsify(net, 0.9, inplace=False, return_report=True)
    assert report.model is not net
    assert dict(net.named_modules()) == modules
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert isinstance(report.model.fc1, SparseLinear) and type(net.fc1) is nn.Linear


def test_modes_requires_grad_and_model_root():
    net = Net()
    net.fc1.eval()
    net.fc2.weight.requires_grad_(False)
    sparseprop.sparsify(net, 0.9)
    assert not net.fc1.training and net.fc2.training and net.conv1.training
    assert not net.fc2.values.requires_grad and net.fc2.bias.requires_grad
    # the model itself can be a layer: the result is only in report.model
    lin = nn.Linear(10, 4)
    report = sparseprop.sparsify(lin, 0.9, return_report=True)
    assert isinstance(report.model, SparseLinear) and type(lin) is nn.Linear
    x = torch.randn(2, 10)
    with torch.no_grad():
        lin.weight.mul_(report.model.weight != 0)
    torch.testing.assert_close(report.model(x), lin(x))
    assert isinstance(sparseprop.densify(report.model), nn.Linear)


def test_shared_modules_and_tied_weights():
    shared = nn.Linear(16, 16)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(16, 16), nn.Linear(16, 16))
    model[4].weight = model[3].weight  # tied parameter
    report = sparseprop.sparsify(model, 0.9, return_report=True)
    assert isinstance(model[0], SparseLinear) and model[0] is model[2]
    assert type(model[3]) is nn.Linear and type(model[4]) is nn.Linear
    rows = _rows(report)
    assert set(rows) == {"0", "3", "4"}
    assert "shared" in rows["3"]["reason"] and "shared" in rows["4"]["reason"]


def test_unsupported_layers_stay_dense():
    class MyLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(nn.Linear(8, 8, device="meta"), MyLinear(8, 8), nn.Linear(8, 8))
    report = sparseprop.sparsify(model, 0.9, return_report=True)
    rows = _rows(report)
    assert rows["0"]["decision"] == "dense" and "weights on meta" in rows["0"]["reason"]
    assert rows["1"]["decision"] == "dense" and "forward" in rows["1"]["reason"]
    assert report.converted == ["2"]


def test_foreign_hooks_warn():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    model[0].register_forward_hook(lambda *a: None)
    with pytest.warns(UserWarning, match="forward hooks on '0'"):
        sparseprop.sparsify(model, 0.9)


def test_sparsify_densify_under_inference_mode_give_trainable_models():
    net = Net()
    with torch.inference_mode():
        copied = sparseprop.sparsify(net, 0.9, inplace=False, return_report=True).model
        sparseprop.sparsify(net, 0.9)
        dense_copy = sparseprop.densify(net, inplace=False)
    for model in (net, copied):
        assert not model.fc1.values.is_inference() and not model.fc1.indptr.is_inference()
        assert not model.bn.running_mean.is_inference()
        model(_x()).sum().backward()
        assert model.fc1.values.grad is not None
    assert not dense_copy.fc1.weight.is_inference()
    dense_copy(_x()).sum().backward()
    with torch.inference_mode():
        sparseprop.densify(net)
    net(_x()).sum().backward()
    assert net.fc1.weight.grad is not None


# --------------------------------------------------------------------------------------
# only_if_faster
# --------------------------------------------------------------------------------------
def test_only_if_faster_decisions(monkeypatch):
    """Decision rule with a 10% margin, on fake timings; the real inputs are captured."""
    timings = {(32, 512): (10.0, 5.0), (5, 32): (10.0, 9.5), (8, 3, 3, 3): (10.0, 12.0),
               (8, 4, 3, 3): (10.0, 8.9)}
    seen = {}

    def fake_time_pair(dense, sparse, x, needs_grad, reps, warmup):
        shape = tuple(dense.weight.shape)
        seen[shape] = (tuple(x.shape), needs_grad, reps, warmup)
        return timings[shape]

    monkeypatch.setattr(convert_mod, "_time_pair", fake_time_pair)
    net = Net()
    net.train()
    bn_state = copy.deepcopy(net.bn.state_dict())
    x = _x(6)
    report = sparseprop.sparsify(net, 0.9, only_if_faster=True, sample_input=x, reps=3, warmup=1, return_report=True)
    rows = _rows(report)
    assert rows["fc1"]["decision"] == "sparse" and rows["fc1"]["dense_ms"] == 10.0
    assert rows["fc2"]["decision"] == "dense"          # 5% faster: a near-tie stays dense
    assert rows["conv1"]["decision"] == "dense"        # slower
    assert rows["conv2"]["decision"] == "sparse"       # 11% faster
    assert isinstance(net.fc1, SparseLinear) and type(net.fc2) is nn.Linear
    # each layer was timed on its real input; only the model input needs no gradient
    assert seen[(8, 3, 3, 3)] == ((6, 3, 8, 8), False, 3, 1)
    assert seen[(8, 4, 3, 3)][:2] == ((6, 8, 8, 8), True)
    assert seen[(32, 512)][:2] == ((6, 512), True)
    # the capture forward ran in eval mode: BN statistics unchanged, modes restored
    assert all(torch.equal(v, net.bn.state_dict()[k]) for k, v in bn_state.items())
    assert net.training and net.bn.training
    text = str(report)
    assert "10.000" in text and "not 10% faster" in text


def test_only_if_faster_real_timing():
    big = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                        nn.Linear(512, 4))
    unused = nn.Linear(512, 512)
    model = nn.ModuleDict({"body": big, "unused": unused})

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m["body"](x)

    wrapped = Wrapper()
    x = torch.randn(64, 256)
    report = sparseprop.sparsify(wrapped, 0.98, only_if_faster=True, sample_input=(x,),
                                 reps=3, warmup=1, return_report=True)
    rows = _rows(report)
    assert rows["m.unused"]["decision"] == "dense"
    assert rows["m.unused"]["reason"] == "not reached by sample_input"
    for name in ("m.body.0", "m.body.2", "m.body.4"):
        r = rows[name]
        assert r["dense_ms"] > 0 and r["sparse_ms"] > 0
        faster = r["sparse_ms"] <= 0.9 * r["dense_ms"]
        assert (r["decision"] == "sparse") == faster
        layer = wrapped.get_submodule(name)
        assert isinstance(layer, SparseLinear) == faster
        assert layer.weight.grad is None if isinstance(layer, nn.Linear) else layer.values.grad is None
    # outputs of the mixed model equal the dense model pruned the same way
    ref = copy.deepcopy(wrapped)
    sparseprop.densify(ref)
    torch.testing.assert_close(_outputs(wrapped, x), _outputs(ref, x), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------
# densify
# --------------------------------------------------------------------------------------
def test_densify_round_trip():
    net = Net()
    sparseprop.sparsify(net, 0.8)
    net.fc1.eval()
    net.fc2.values.requires_grad_(False)
    x = _x()
    y_sparse = net(x).detach()
    dense = sparseprop.densify(net, inplace=False)
    assert isinstance(net.fc1, SparseLinear)  # untouched
    assert type(dense.fc1) is nn.Linear and type(dense.conv2) is nn.Conv2d
    assert dense.conv2.groups == 2 and dense.conv2.bias is None
    assert not dense.fc1.training and not dense.fc2.weight.requires_grad
    assert not any(isinstance(m, SparseWeightModule) for m in dense.modules())
    torch.testing.assert_close(dense(x).detach(), y_sparse, rtol=1e-5, atol=1e-5)
    out = sparseprop.densify(net)
    assert out is net and type(net.fc1) is nn.Linear
    torch.testing.assert_close(net(x).detach(), y_sparse, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------
def test_summary_numbers_and_table():
    net = Net()
    sparseprop.sparsify(net, 0.9, names=["fc1", "conv2"])
    s = sparseprop.summary(net)
    rows = {r["layer"]: r for r in s}
    assert list(rows) == ["conv1", "conv2", "fc1", "fc2"]
    fc1 = rows["fc1"]
    nnz = net.fc1.nnz
    assert fc1["nnz"] == nnz and fc1["shape"] == (32, 512)
    assert fc1["bytes"] == 4 * nnz + 4 * nnz + 8 * 33 + 4 * 32 == fc1["sparse_bytes"]
    assert fc1["dense_bytes"] == 4 * 32 * 512 + 4 * 32
    assert math.isclose(fc1["sparsity"], 1 - nnz / (32 * 512))
    conv2 = rows["conv2"]
    assert conv2["bytes"] == 8 * net.conv2.nnz + 8 * 9  # no bias
    fc2 = rows["fc2"]
    assert fc2["bytes"] == fc2["dense_bytes"] == 4 * (32 * 5 + 5) and fc2["nnz"] == 160
    t = s.totals
    assert t["bytes"] == sum(r["bytes"] for r in s)
    assert t["nnz"] == sum(r["nnz"] for r in s)
    bn_bytes = sum(v.numel() * v.element_size() for v in net.bn.state_dict().values())
    assert t["other_bytes"] == bn_bytes
    text = str(s)
    for word in ("conv1", "fc1", "total", "sparse form", "dense", "KiB"):
        assert word in text
    assert repr(s) == text
