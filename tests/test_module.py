"""SparseLinear as an nn.Module: what is particular to it (index dtypes on load, conversions,
properties, pattern replacement, training) and CSRPattern's own API. The contract it shares
with SparseConv2d (state_dict, checkpoints, pickle, deepcopy, seeding) is in
tests/test_module_contract.py."""
from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import sparseprop
from sparseprop import CSRPattern, SparseLinear

from conftest import (assert_same_sparse_module, compare_with_dense, make_linear, outputs,
                      tol)


# --------------------------------------------------------------------------------------
# state_dict
# --------------------------------------------------------------------------------------
def test_load_state_dict_with_int64_indices_and_int32_indptr():
    src = SparseLinear(15, 8, sparsity=0.6)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    sd["indices"] = sd["indices"].long()
    sd["indptr"] = sd["indptr"].int()
    dst = SparseLinear(15, 8, sparsity=0.2)
    dst.load_state_dict(sd)
    assert dst.indices.dtype == torch.int32 and dst.indptr.dtype == torch.int64
    assert_same_sparse_module(src, dst, torch.randn(3, 15))


# --------------------------------------------------------------------------------------
# serialization and copies
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["pickle", "deepcopy", "torch.save"])
def test_pattern_survives_serialization(how):
    """A CSRPattern that went through pickle must still drive the kernels."""
    p = CSRPattern.random(7, 9, 0.5)
    if how == "pickle":
        q = pickle.loads(pickle.dumps(p))
    elif how == "deepcopy":
        q = copy.deepcopy(p)
    else:
        buf = io.BytesIO()
        torch.save(p, buf)
        buf.seek(0)
        q = torch.load(buf, weights_only=False)
    assert q.shape == p.shape and torch.equal(q.indptr, p.indptr) and torch.equal(q.indices, p.indices)
    values = torch.randn(p.nnz, requires_grad=True)
    x = torch.randn(4, 9, requires_grad=True)
    y = sparseprop.functional.sparse_linear(x, q, values)
    torch.testing.assert_close(y, x @ p.to_dense(values).t(), **tol(9))
    y.sum().backward()  # needs q.transposed
    assert all(torch.equal(a, b) for a, b in zip(q.transposed, p.transposed))


def test_global_seed_makes_construction_reproducible():
    torch.manual_seed(3)
    a = SparseLinear(40, 30, sparsity=0.8)
    torch.manual_seed(3)
    b = SparseLinear(40, 30, sparsity=0.8)
    assert_same_sparse_module(a, b, torch.randn(2, 40))


def test_initialization_bounds_like_nn_linear():
    m = SparseLinear(100, 50, sparsity=0.5)
    bound = 1 / 100 ** 0.5
    assert m.values.abs().max() <= bound and m.bias.abs().max() <= bound
    assert m.values.std() > bound / 4  # not all zero / degenerate


# --------------------------------------------------------------------------------------
# from_dense / to_dense
# --------------------------------------------------------------------------------------
def test_from_dense_keeps_nonzeros():
    lin = nn.Linear(12, 7)
    with torch.no_grad():
        lin.weight[lin.weight.abs() < 0.1] = 0.0
        lin.weight[3] = 0.0  # an empty row
        lin.weight[:, 5] = 0.0  # an empty column
    m = SparseLinear.from_dense(lin)
    assert torch.equal(m.pattern.mask(), lin.weight != 0)
    assert m.nnz == int((lin.weight != 0).sum())
    assert torch.equal(m.weight.detach(), lin.weight.detach())
    assert torch.equal(m.bias.detach(), lin.bias.detach())
    x = torch.randn(9, 12)
    torch.testing.assert_close(m(x), lin(x), **tol(12))


def test_from_dense_with_mask_keeps_zero_weights_trainable():
    lin = nn.Linear(10, 6)
    mask = torch.rand(6, 10) < 0.4
    mask[0, 0] = True
    with torch.no_grad():
        lin.weight[0, 0] = 0.0  # exactly zero but inside the mask: must stay in the pattern
    m = SparseLinear.from_dense(lin, mask=mask)
    assert torch.equal(m.pattern.mask(), mask)
    assert m.nnz == int(mask.sum())
    assert torch.equal(m.weight.detach(), lin.weight.detach() * mask)
    x = torch.randn(4, 10)
    torch.testing.assert_close(m(x), nn.functional.linear(x, lin.weight * mask, lin.bias), **tol(10))
    # a float mask works too (nonzero = keep)
    m2 = SparseLinear.from_dense(lin, mask=mask.float() * 3)
    assert torch.equal(m2.pattern.mask(), mask)


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9, 0.97, 1.0])
@pytest.mark.parametrize("shape", [(13, 7), (64, 32)])
def test_from_dense_sparsity_keeps_largest_magnitudes(shape, sparsity):
    in_f, out_f = shape
    lin = nn.Linear(in_f, out_f)
    m = SparseLinear.from_dense(lin, sparsity=sparsity)
    numel = in_f * out_f
    assert m.nnz == round((1 - sparsity) * numel)
    mask = m.pattern.mask()
    mag = lin.weight.detach().abs()
    if 0 < m.nnz < numel:
        assert mag[mask].min() >= mag[~mask].max()
    assert torch.equal(m.weight.detach(), lin.weight.detach() * mask)
    assert m.sparsity == pytest.approx(1 - m.nnz / numel)


def test_from_dense_sparsity_within_mask():
    lin = nn.Linear(20, 10)
    mask = torch.zeros(10, 20, dtype=torch.bool)
    mask[:, :10] = True  # 100 allowed positions
    m = SparseLinear.from_dense(lin, mask=mask, sparsity=0.75)  # 50 wanted
    assert m.nnz == 50
    kept = m.pattern.mask()
    assert not (kept & ~mask).any()
    mag = lin.weight.detach().abs()
    assert mag[kept].min() >= mag[mask & ~kept].max()
    # asking for more than the mask allows keeps the whole mask
    m2 = SparseLinear.from_dense(lin, mask=mask, sparsity=0.1)
    assert torch.equal(m2.pattern.mask(), mask)


def test_from_dense_sparsity_is_exact_even_if_weight_has_zeros():
    """Docstring: with ``sparsity`` (and no mask) exactly round((1-s)*numel) weights
    remain. A weight that already has zeros must not cap the count at its nonzeros."""
    lin = nn.Linear(10, 10)
    with torch.no_grad():
        lin.weight[:, :5] = 0.0  # 50 nonzeros
    m = SparseLinear.from_dense(lin, sparsity=0.2)
    assert m.nnz == 80
    assert m.pattern.mask()[:, 5:].all()  # every nonzero is among the largest


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_from_dense_keeps_the_storage_dtype_and_copies(dtype):
    lin = nn.Linear(6, 4).to(dtype)
    m = SparseLinear.from_dense(lin)
    assert m.values.dtype == dtype and m.bias.dtype == dtype
    torch.testing.assert_close(m.weight, lin.weight.detach(), rtol=0, atol=0)
    assert m.to_dense().weight.dtype == dtype
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
    assert m.values.abs().sum() > 0 and m.bias.abs().sum() > 0  # no shared storage


def test_from_dense_without_bias():
    lin = nn.Linear(6, 4, bias=False)
    m = SparseLinear.from_dense(lin)
    assert m.bias is None
    x = torch.randn(3, 6)
    torch.testing.assert_close(m(x), lin(x), **tol(6))


@pytest.mark.parametrize("bias", [True, False])
def test_to_dense_equality(bias):
    m = make_linear(30, 20, bias=bias, sparsity=0.8)
    d = m.to_dense()
    assert isinstance(d, nn.Linear)
    assert (d.in_features, d.out_features) == (30, 20)
    assert torch.equal(d.weight.detach(), m.weight.detach())
    assert (d.bias is None) == (not bias)
    if bias:
        assert torch.equal(d.bias.detach(), m.bias.detach())
    assert int((d.weight != 0).sum()) <= m.nnz
    assert not d.weight[~m.pattern.mask()].any()
    x = torch.randn(7, 30)
    torch.testing.assert_close(m(x), d(x), **tol(30))
    # independent parameters
    with torch.no_grad():
        d.weight.add_(1.0)
    assert not m.weight[~m.pattern.mask()].any()
    if bias:  # and back again
        back = SparseLinear.from_dense(m.to_dense(), mask=m.pattern.mask())
        assert_same_sparse_module(m, back, x)


# --------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 1.0])
def test_properties(sparsity):
    m = SparseLinear(40, 25, sparsity=sparsity)
    numel = 40 * 25
    assert m.nnz == round((1 - sparsity) * numel) == m.values.numel()
    assert m.sparsity == pytest.approx(1 - m.nnz / numel)
    assert isinstance(m.values, nn.Parameter) and m.values.dim() == 1
    p = m.pattern
    assert isinstance(p, CSRPattern)
    assert p.shape == (25, 40) and p.nnz == m.nnz
    assert torch.equal(p.indptr, m.indptr) and torch.equal(p.indices, m.indices)
    assert m.indptr.dtype == torch.int64 and m.indices.dtype == torch.int32
    w = m.weight
    assert w.shape == (25, 40)
    mask = p.mask()
    assert int(mask.sum()) == m.nnz
    assert not w[~mask].any()
    assert torch.equal(p.gather(w.detach()), m.values.detach())
    text = repr(m)
    assert f"sparsity={m.sparsity:.4f}" in text and f"nnz={m.nnz}" in text
    assert "in_features=40" in text and "out_features=25" in text
    assert f"sparsity={m.sparsity:.4f}" in m.extra_repr()


def test_parameters_are_values_and_bias():
    m = SparseLinear(10, 8, sparsity=0.5)
    assert [n for n, _ in m.named_parameters()] == ["values", "bias"]


def test_module_apply_methods_keep_working():
    m = SparseLinear(20, 10, sparsity=0.5)
    x = torch.randn(4, 20)
    ref = outputs(m, x)
    m.to(torch.float32)
    m.cpu()
    m.share_memory()  # may move buffers to new storage: the pattern is re-derived
    m.float()
    assert m.indices.dtype == torch.int32 and m.indptr.dtype == torch.int64
    assert torch.equal(outputs(m, x), ref)
    m.train(False)
    assert torch.equal(outputs(m, x), ref)


def test_construction_under_float64_default_dtype():
    """SparseLinear computes in float32 only (it rejects dtype=float64), so a module
    built while torch's default dtype is float64 must still be float32 and usable."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        m = SparseLinear(6, 4, sparsity=0.5)
    finally:
        torch.set_default_dtype(previous)
    assert m.values.dtype == torch.float32
    assert m(torch.randn(3, 6)).shape == (3, 4)


# --------------------------------------------------------------------------------------
# set_pattern and in-place pattern edits
# --------------------------------------------------------------------------------------
def test_set_pattern_keeps_parameter_object():
    m = SparseLinear(20, 10, sparsity=0.5)
    values_param = m.values
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    new = CSRPattern.random(10, 20, 0.8)
    m(torch.randn(3, 20)).sum().backward()
    m.set_pattern(new)
    assert m.values is values_param
    assert m.nnz == new.nnz and torch.equal(m.values.detach(), torch.zeros(new.nnz))
    assert m.values.grad is None  # a gradient of the old shape would be meaningless
    assert torch.equal(m.indices, new.indices) and torch.equal(m.indptr, new.indptr)
    assert torch.equal(m.weight.detach(), torch.zeros(10, 20))
    # an optimizer built before the change still trains the layer
    m(torch.randn(3, 20)).pow(2).sum().backward()
    m(torch.randn(3, 20)).sum().backward()
    opt.step()
    assert m.values.abs().sum() > 0
    assert not m.weight[~new.mask()].any()
    compare_with_dense(m, torch.randn(5, 20, requires_grad=True))


def test_set_pattern_with_values():
    m = SparseLinear(20, 10, sparsity=0.5)
    new = CSRPattern.random(10, 20, 0.3)
    vals = torch.randn(new.nnz, dtype=torch.float64)
    m.set_pattern(new, vals)
    assert m.values.dtype == torch.float32
    assert torch.equal(m.values.detach(), vals.float())
    vals.zero_()  # copied, not aliased
    assert m.values.abs().sum() > 0
    compare_with_dense(m, torch.randn(5, 20, requires_grad=True))


def test_set_pattern_same_nnz_keeps_grad_shape():
    m = SparseLinear(20, 10, sparsity=0.5)
    new = CSRPattern.random(10, 20, 0.5)
    m.set_pattern(new, torch.randn(new.nnz))
    compare_with_dense(m, torch.randn(5, 20, requires_grad=True))


def test_valid_inplace_pattern_edit_is_picked_up():
    """Editing the pattern buffers in place rebuilds the (transposed) pattern."""
    m = SparseLinear(12, 9, sparsity=0.5)
    x = torch.randn(4, 12)
    m(x).sum().backward()  # builds the transposed pattern
    new = CSRPattern.random(9, 12, 0.5, generator=torch.Generator().manual_seed(99))
    assert not torch.equal(new.indices, m.indices)
    m.indptr.copy_(new.indptr)
    m.indices.copy_(new.indices)
    assert torch.equal(m.pattern.mask(), new.mask())
    m.zero_grad(set_to_none=True)
    compare_with_dense(m, torch.randn(6, 12, requires_grad=True))


def test_replacing_pattern_buffers_is_picked_up():
    m = SparseLinear(12, 9, sparsity=0.5)
    new = CSRPattern.random(9, 12, 0.5, generator=torch.Generator().manual_seed(5))
    m.indptr = new.indptr.clone()
    m.indices = new.indices.clone()
    assert torch.equal(m.pattern.mask(), new.mask())
    compare_with_dense(m, torch.randn(6, 12, requires_grad=True))


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2),
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-2),
], ids=["sgd-momentum-wd", "sgd-nesterov", "adam", "adamw"])
def test_training_keeps_pruned_weights_zero(isa, make_opt):
    torch.manual_seed(0)
    m = SparseLinear(32, 16, sparsity=0.8)
    mask = m.pattern.mask()
    indptr, indices = m.indptr.clone(), m.indices.clone()
    values0 = m.values.detach().clone()
    target = nn.Linear(32, 16)
    opt = make_opt(m.parameters())
    x_all = torch.randn(64, 32)
    with torch.no_grad():
        y_all = target(x_all)
    losses = []
    for step in range(15):
        opt.zero_grad()
        loss = (m(x_all) - y_all).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        w = m.weight.detach()
        assert not w[~mask].any(), f"pruned weight became nonzero at step {step}"
    assert torch.equal(m.indptr, indptr) and torch.equal(m.indices, indices)
    assert not torch.equal(m.values.detach(), values0)
    assert losses[-1] < losses[0]


def test_sparse_mlp_learns():
    torch.manual_seed(0)
    net = nn.Sequential(SparseLinear(8, 64, sparsity=0.5), nn.Tanh(), SparseLinear(64, 1, sparsity=0.5))
    x = torch.randn(256, 8)
    y = x[:, :1] * 2 - x[:, 1:2]
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = (net(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.2 * first


# --------------------------------------------------------------------------------------
# CSRPattern
# --------------------------------------------------------------------------------------
def test_pattern_from_mask_round_trip():
    mask = torch.rand(7, 11) < 0.3
    mask[2] = False
    p = CSRPattern.from_mask(mask)
    assert p.shape == (7, 11) and p.nnz == int(mask.sum())
    assert torch.equal(p.mask(), mask)
    assert p.indptr.dtype == torch.int64 and p.indices.dtype == torch.int32
    assert p.indptr[3] == p.indptr[2]
    for r in range(7):
        row = p.indices[p.indptr[r]:p.indptr[r + 1]]
        assert torch.equal(row.long(), mask[r].nonzero().flatten())


@pytest.mark.parametrize("rows,cols,sparsity", [(1, 1, 0.0), (1, 1, 1.0), (7, 11, 0.5), (50, 3, 0.9),
                                                (0, 5, 0.5), (5, 0, 0.5)])
def test_pattern_random(rows, cols, sparsity):
    p = CSRPattern.random(rows, cols, sparsity, generator=torch.Generator().manual_seed(0))
    assert p.nnz == round((1 - sparsity) * rows * cols)
    assert p.shape == (rows, cols)
    mask = p.mask()
    assert mask.shape == (rows, cols) and int(mask.sum()) == p.nnz
    q = CSRPattern.random(rows, cols, sparsity, generator=torch.Generator().manual_seed(0))
    assert torch.equal(p.indices, q.indices) and torch.equal(p.indptr, q.indptr)


def test_pattern_transposed():
    mask = torch.rand(6, 9) < 0.4
    p = CSRPattern.from_mask(mask)
    values = torch.arange(p.nnz, dtype=torch.float32) + 1
    t_indptr, t_indices, t_perm = p.transposed
    pt = CSRPattern(t_indptr, t_indices, (9, 6))
    assert torch.equal(pt.mask(), mask.t())
    # t_perm says where each transposed nonzero sits in the original values
    assert torch.equal(pt.to_dense(values[t_perm]), p.to_dense(values).t())


def test_pattern_gather_to_dense_inverse():
    p = CSRPattern.random(8, 5, 0.4)
    v = torch.randn(p.nnz)
    dense = p.to_dense(v)
    assert torch.equal(p.gather(dense), v)
    assert not dense[~p.mask()].any()
    assert "nnz=" in repr(p) and "shape=(8, 5)" in repr(p)
    assert p.sparsity == pytest.approx(1 - p.nnz / 40)


def test_pattern_accepts_lists_and_other_int_dtypes():
    p = CSRPattern([0, 1, 3], [2, 0, 1], (2, 3))
    assert p.indptr.dtype == torch.int64 and p.indices.dtype == torch.int32
    q = CSRPattern(torch.tensor([0, 1, 3], dtype=torch.int32), torch.tensor([2, 0, 1], dtype=torch.int16), (2, 3))
    assert torch.equal(p.mask(), q.mask())
    assert torch.equal(p.mask(), torch.tensor([[0, 0, 1], [1, 1, 0]], dtype=torch.bool))


def test_pattern_accepts_empty_index_list():
    """An all-zero pattern written with plain lists: [] is a valid (empty) list of indices."""
    p = CSRPattern([0, 0, 0], [], (2, 3))
    assert p.nnz == 0 and p.indices.dtype == torch.int32
    assert not p.mask().any()


def test_functional_with_shared_pattern_two_value_sets():
    p = CSRPattern.random(9, 13, 0.5)
    v1, v2 = torch.randn(p.nnz), torch.randn(p.nnz)
    x = torch.randn(4, 13)
    y1 = sparseprop.functional.sparse_linear(x, p, v1)
    y2 = sparseprop.functional.sparse_linear(x, p, v2)
    torch.testing.assert_close(y1, x @ p.to_dense(v1).t(), **tol(13))
    torch.testing.assert_close(y2, x @ p.to_dense(v2).t(), **tol(13))
