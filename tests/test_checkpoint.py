"""Checkpoints of whole sparse models: round trips into fresh sparse models, into dense
models, file size, all-or-nothing loading of bad checkpoints, pickling and deepcopy."""
from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import sparseprop
from sparseprop import SparseConv2d, SparseLinear


def _dense_arch():
    """Conv (grouped, bias-free) + BN + MLP: the dense architecture."""
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 6, (3, 2), stride=2, groups=2, bias=False), nn.ReLU(), nn.Flatten(),
        nn.Linear(6 * 3 * 4, 40), nn.ReLU(), nn.Linear(40, 20, bias=False), nn.ReLU(),
        nn.Linear(20, 3))


def _sparse_arch(seed):
    """The same architecture with freshly built sparse layers (random patterns)."""
    g = torch.Generator().manual_seed(seed)
    return nn.Sequential(
        SparseConv2d(4, 8, 3, padding=1, sparsity=0.7, generator=g), nn.BatchNorm2d(8), nn.ReLU(),
        SparseConv2d(8, 6, (3, 2), stride=2, groups=2, bias=False, sparsity=0.6, generator=g),
        nn.ReLU(), nn.Flatten(),
        SparseLinear(6 * 3 * 4, 40, sparsity=0.9, generator=g), nn.ReLU(),
        SparseLinear(40, 20, bias=False, sparsity=0.8, generator=g), nn.ReLU(),
        nn.Linear(20, 3))


def _trained(seed=0):
    """A sparse model with non-default BN statistics."""
    torch.manual_seed(seed)
    model = _sparse_arch(seed)
    model.train()
    model(torch.randn(8, 4, 8, 8))
    return model.eval()


X = None


def _x():
    global X
    if X is None:
        X = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    return X


def _out(model):
    model.eval()
    with torch.no_grad():
        return model(_x())


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, snapshot):
    current = model.state_dict()
    assert set(current) == set(snapshot)
    for k, v in snapshot.items():
        assert current[k].shape == v.shape and torch.equal(current[k], v), k


def _save(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------
def test_state_dict_into_fresh_sparse_model():
    model = _trained()
    fresh = _sparse_arch(seed=99)  # same architecture, other random patterns
    assert not torch.equal(fresh[6].indices, model[6].indices)
    data = _save(model.state_dict())
    sd = torch.load(io.BytesIO(data), weights_only=True)
    result = sparseprop.safe_load_state_dict(fresh, sd)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(_out(fresh), _out(model))
    for a, b in zip(fresh.modules(), model.modules()):
        if isinstance(a, (SparseLinear, SparseConv2d)):
            assert torch.equal(a.pattern.mask(), b.pattern.mask())
    # plain load_state_dict works as well, and the loaded model trains
    other = _sparse_arch(seed=5)
    other.load_state_dict(model.state_dict())
    assert torch.equal(_out(other), _out(model))
    other.train()
    other(_x()).sum().backward()
    assert other[6].values.grad.shape == (other[6].nnz,)


def test_load_dense_state_dict():
    model = _trained()
    dense = _dense_arch()
    sd = model.state_dict()
    dense_sd = sparseprop.densify_state_dict(sd, dense)
    assert "6.weight" in dense_sd and "6.values" not in dense_sd and "6.indptr" not in dense_sd
    assert dense_sd["3.weight"].shape == (6, 4, 3, 2)  # (O, C/groups, kH, kW)
    assert dense_sd["8.weight"].shape == (20, 40)
    assert "6.values" in sd  # the input is not modified
    sparseprop.load_dense_state_dict(dense, sd)
    torch.testing.assert_close(_out(dense), _out(model), rtol=1e-5, atol=1e-5)
    for i in (0, 3, 6, 8):
        assert torch.equal(dense[i].weight.detach(), model[i].weight.detach())
    # the dense model is an ordinary one: sparsify brings the same sparse model back
    report = sparseprop.sparsify(dense, min_sparsity=0.55, return_report=True)
    assert report.converted == ["0", "3", "6", "8"]
    torch.testing.assert_close(_out(dense), _out(model), rtol=1e-5, atol=1e-5)


def test_densify_state_dict_errors():
    sd = _trained().state_dict()
    with pytest.raises(ValueError, match="'6'.*does not have"):
        sparseprop.densify_state_dict(sd, nn.Sequential(*list(_dense_arch())[:5]))
    with pytest.raises(ValueError, match=r"'0' \(dense weight shape \(2, 2\)\).*indptr"):
        sparseprop.densify_state_dict(sd, nn.Sequential(nn.Linear(2, 2)))
    bad = dict(sd)
    bad["6.indices"] = bad["6.indices"].clone()
    bad["6.indices"][0] = 10_000
    with pytest.raises(ValueError, match="while densifying '6'"):
        sparseprop.densify_state_dict(bad, _dense_arch())
    bad = dict(sd)
    del bad["6.values"]
    with pytest.raises(ValueError, match="no '6.values'"):
        sparseprop.densify_state_dict(bad, _dense_arch())


def test_checkpoint_file_size_95_percent_sparse_mlp():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                          nn.Linear(1024, 10))
    sparse = sparseprop.sparsify(dense, 0.95, inplace=False, return_report=True).model
    dense_bytes, sparse_bytes = len(_save(dense.state_dict())), len(_save(sparse.state_dict()))
    ratio = sparse_bytes / dense_bytes
    print(f"\ntorch.save: dense {dense_bytes} B, 95%-sparse {sparse_bytes} B, ratio {ratio:.4f}")
    # 8 bytes per nonzero (float32 value + int32 index) vs 4 per dense weight: ~0.1
    assert 0.09 < ratio < 0.12


# --------------------------------------------------------------------------------------
# bad checkpoints leave the whole model untouched
# --------------------------------------------------------------------------------------
def _tamper_indices_range(sd):
    sd["8.indices"] = sd["8.indices"].clone()
    sd["8.indices"][-1] = 40


def _tamper_indices_unsorted(sd):
    sd["8.indices"] = sd["8.indices"].flip(0).contiguous()


def _tamper_indptr(sd):
    sd["8.indptr"] = sd["8.indptr"].clone()
    sd["8.indptr"][3] = sd["8.indptr"][4] + 1


def _tamper_values_length(sd):
    sd["8.values"] = sd["8.values"][:-1]


def _tamper_float_indices(sd):
    sd["8.indices"] = sd["8.indices"].float()


def _tamper_missing_indptr(sd):
    del sd["8.indptr"]


def _tamper_missing_key(sd):
    del sd["10.bias"]


def _tamper_extra_key(sd):
    sd["10.extra"] = torch.zeros(1)


def _tamper_dense_shape(sd):
    sd["10.weight"] = torch.zeros(3, 21)


def _tamper_bn_shape(sd):
    sd["1.running_mean"] = torch.zeros(9)


TAMPERS = {
    "indices-out-of-range": (_tamper_indices_range, ValueError, "'8'.*indices"),
    "indices-unsorted": (_tamper_indices_unsorted, ValueError, "'8'"),
    "indptr-decreasing": (_tamper_indptr, ValueError, "'8'.*indptr"),
    "values-truncated": (_tamper_values_length, ValueError, "'8'.*values has shape"),
    "float-indices": (_tamper_float_indices, ValueError, "'8'.*integer"),
    "missing-indptr": (_tamper_missing_indptr, ValueError, "'8'.*'8.indptr'"),
    "missing-key": (_tamper_missing_key, RuntimeError, "Missing key.*10.bias"),
    "unexpected-key": (_tamper_extra_key, RuntimeError, "Unexpected key.*10.extra"),
    "dense-shape": (_tamper_dense_shape, RuntimeError, "size mismatch for 10.weight"),
    "bn-shape": (_tamper_bn_shape, RuntimeError, "size mismatch for 1.running_mean"),
}


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_bad_checkpoint_leaves_model_untouched(tamper):
    """The first sparse layers ('0', '3', '6') would load fine; the damage is further on."""
    source = _trained(seed=1)
    target = _trained(seed=2)
    sd = dict(source.state_dict())
    fn, exc, match = TAMPERS[tamper]
    fn(sd)
    before = _snapshot(target)
    y_before = _out(target)
    with pytest.raises(exc, match=match):
        sparseprop.safe_load_state_dict(target, sd)
    _assert_unchanged(target, before)
    assert torch.equal(_out(target), y_before)
    # the good checkpoint still loads afterwards
    sparseprop.safe_load_state_dict(target, source.state_dict())
    assert torch.equal(_out(target), _out(source))


def test_truncated_checkpoint_file(tmp_path):
    model = _trained(seed=1)
    target = _trained(seed=2)
    path = tmp_path / "ckpt.pt"
    data = _save(model.state_dict())
    before = _snapshot(target)
    for cut in (len(data) // 2, len(data) - 64, 200):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated, corrupted"):
            sparseprop.safe_load_state_dict(target, str(path))
        _assert_unchanged(target, before)
    path.write_bytes(data)
    sparseprop.safe_load_state_dict(target, path)
    assert torch.equal(_out(target), _out(model))


def test_mismatched_architectures_get_hints():
    dense, sparse = _dense_arch(), _trained()
    with pytest.raises(RuntimeError, match="load_dense_state_dict"):
        sparseprop.safe_load_state_dict(dense, sparse.state_dict())
    with pytest.raises(RuntimeError, match="sparsify"):
        sparseprop.safe_load_state_dict(sparse, dense.state_dict())


def test_non_strict_and_old_batchnorm_checkpoints():
    model, source = _trained(seed=2), _trained(seed=1)
    sd = dict(source.state_dict())  # a plain dict has no _metadata (old-style checkpoint)
    del sd["10.bias"]
    del sd["1.num_batches_tracked"]  # BatchNorm fills this in for pre-version-2 checkpoints
    with pytest.raises(RuntimeError, match="10.bias"):
        sparseprop.safe_load_state_dict(model, sd)
    result = sparseprop.safe_load_state_dict(model, sd, strict=False)
    assert "10.bias" in result.missing_keys
    assert torch.equal(model[6].indices, source[6].indices)


def test_load_other_nnz_mid_training():
    """Loading a checkpoint whose layers have other nnz while last step's graph is alive."""
    source = _trained(seed=1)
    sparseprop.apply_masks(source, {"6": torch.rand(40, 72) < 0.3})
    model = _trained(seed=2).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = model(_x()).square().mean()
    loss.backward()
    opt.step()
    sparseprop.safe_load_state_dict(model, source.state_dict())
    assert model[6].nnz == source[6].nnz
    opt.zero_grad()
    loss = model(_x()).square().mean()
    loss.backward()
    opt.step()
    assert model[6].values.grad.shape == (source[6].nnz,)


# --------------------------------------------------------------------------------------
# whole-model pickling and deepcopy
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["pickle", "deepcopy", "torch.save"])
def test_whole_model_copies(how):
    model = _trained()
    model.train()
    model(_x()).sum().backward()  # caches built, grads present
    if how == "pickle":
        clone = pickle.loads(pickle.dumps(model))
    elif how == "deepcopy":
        clone = copy.deepcopy(model)
    else:
        clone = torch.load(io.BytesIO(_save(model)), weights_only=False)
    assert torch.equal(_out(clone), _out(model))
    # independent: training the copy leaves the original alone
    before = _snapshot(model)
    opt = torch.optim.SGD(clone.parameters(), lr=0.1)
    clone.train()
    clone(_x()).sum().backward()
    opt.step()
    _assert_unchanged(model, before)
    assert not torch.equal(clone[6].values, model[6].values)
