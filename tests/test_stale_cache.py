"""No stale derived data: a pattern edited in place (through the tensor, ``.data``,
``copy_``, a numpy view, a storage swap) is noticed on the next use, validated again,
and everything derived from it (transposed pattern, conv plans) is rebuilt; an edit
between a forward pass and its backward raises instead of mixing two patterns."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import sparseprop
from sparseprop import CSRPattern, SparseConv2d, SparseLinear
from sparseprop.functional import sparse_linear

from conftest import compare_with_dense


def _edit(layer, new: CSRPattern, how: str) -> None:
    if how == "data":
        layer.indices.data[:] = new.indices
        layer.indptr.data[:] = new.indptr
    elif how == "copy_":
        layer.indices.copy_(new.indices)
        layer.indptr.copy_(new.indptr)
    elif how == "numpy":
        layer.indices.numpy()[:] = new.indices.numpy()
        layer.indptr.numpy()[:] = new.indptr.numpy()
    elif how == "swap_storage":
        layer.indices.data = new.indices.clone()
        layer.indptr.data = new.indptr.clone()
    elif how == "share_memory_then_data":
        layer.share_memory()
        layer.indices.data[:] = new.indices
        layer.indptr.data[:] = new.indptr
    elif how == "replace_buffers":
        layer.indices = new.indices.clone()
        layer.indptr = new.indptr.clone()
    else:
        raise AssertionError(how)


EDITS = ["data", "copy_", "numpy", "swap_storage", "share_memory_then_data", "replace_buffers"]


def _same_nnz_pattern(layer, seed: int) -> CSRPattern:
    rows, cols = layer.pattern_shape
    new = CSRPattern.random(rows, cols, layer.sparsity, torch.Generator().manual_seed(seed))
    assert new.nnz == layer.nnz and not torch.equal(new.indices, layer.indices)
    return new


@pytest.mark.parametrize("how", EDITS)
def test_linear_edited_pattern_matches_dense_twin_of_the_edited_buffers(how):
    layer = SparseLinear(30, 20, sparsity=0.7)
    x = torch.randn(5, 30, requires_grad=True)
    layer(x).sum().backward()  # derives and caches the transposed pattern
    new = _same_nnz_pattern(layer, 5)
    _edit(layer, new, how)
    dense = nn.Linear(30, 20)
    with torch.no_grad():
        dense.weight.copy_(new.to_dense(layer.values.detach()))
        dense.bias.copy_(layer.bias)
    compare_with_dense(layer, torch.randn(6, 30, requires_grad=True), dense=dense, what=how)
    assert torch.equal(layer.pattern.indices, new.indices)


@pytest.mark.parametrize("how", ["data", "numpy", "copy_"])
def test_conv_edited_pattern_rebuilds_its_plans(how):
    layer = SparseConv2d(3, 4, 3, padding=1, sparsity=0.6)
    x = torch.randn(2, 3, 6, 6)
    layer(x.requires_grad_()).sum().backward()  # builds a plan for this shape
    new = _same_nnz_pattern(layer, 7)
    _edit(layer, new, how)
    layer.zero_grad(set_to_none=True)
    xs, xd = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    dense = layer.to_dense()
    with torch.no_grad():
        dense.weight.copy_(new.to_dense(layer.values.detach()).view_as(dense.weight))
    y, yd = layer(xs), dense(xd)
    torch.testing.assert_close(y, yd, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(y)
    y.backward(grad)
    yd.backward(grad)
    torch.testing.assert_close(xs.grad, xd.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.values.grad, new.gather(dense.weight.grad.flatten(1)),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layer_fn", [lambda: SparseLinear(12, 8, sparsity=0.5),
                                      lambda: SparseConv2d(2, 4, 3, padding=1, sparsity=0.5)],
                         ids=["linear", "conv"])
def test_edit_between_forward_and_backward_raises(layer_fn):
    layer = layer_fn()
    x = torch.randn(3, 12, requires_grad=True) if isinstance(layer, SparseLinear) else \
        torch.randn(2, 2, 5, 5, requires_grad=True)
    y = layer(x)
    new = _same_nnz_pattern(layer, 3)
    layer.indices.data[:] = new.indices
    layer.indptr.data[:] = new.indptr
    with pytest.raises(RuntimeError, match="edited in place after it was validated"):
        y.sum().backward()
    layer(x).sum().backward()  # the next step uses the edited pattern consistently


def test_functional_pattern_edited_in_place_cannot_give_a_stale_gradient():
    pattern = CSRPattern.random(8, 12, 0.5)
    values = torch.randn(pattern.nnz, requires_grad=True)
    x = torch.randn(4, 12, requires_grad=True)
    sparse_linear(x, pattern, values).sum().backward()
    other = CSRPattern.random(8, 12, 0.5, torch.Generator().manual_seed(9))
    pattern.indices.numpy()[:] = other.indices.numpy()
    pattern.indptr.numpy()[:] = other.indptr.numpy()
    assert not pattern.is_current()
    with pytest.raises(RuntimeError, match="edited in place"):
        sparse_linear(x, pattern, values).sum().backward()


def test_unchanged_pattern_keeps_its_derived_data():
    layer = SparseLinear(20, 10, sparsity=0.6)
    layer(torch.randn(2, 20, requires_grad=True)).sum().backward()
    pattern, transposed = layer.pattern, layer.pattern.transposed
    for _ in range(3):
        layer(torch.randn(2, 20, requires_grad=True)).sum().backward()
    assert layer.pattern is pattern and layer.pattern.transposed is transposed


def test_invalid_in_place_edit_names_the_problem():
    layer = SparseLinear(10, 6, sparsity=0.5)
    layer(torch.randn(2, 10))
    layer.indices.numpy()[0] = 10  # out of range, behind torch's version counter
    with pytest.raises(ValueError, match=r"indices\[0\] = 10 .* out of range \[0, 10\)"):
        layer(torch.randn(2, 10))


def test_deleted_pattern_buffer_is_a_clear_error():
    layer = SparseLinear(10, 6, sparsity=0.5)
    layer.indptr = None
    with pytest.raises(ValueError, match="SparseLinear.indptr must be a tensor, got NoneType"):
        layer(torch.randn(2, 10))


def test_copies_do_not_carry_derived_data_or_share_arrays():
    layer = SparseLinear(20, 10, sparsity=0.6)
    layer(torch.randn(2, 20, requires_grad=True)).sum().backward()
    for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert twin.pattern._t is None  # re-derived on demand, never trusted from a pickle
        twin.indices.data[:] = _same_nnz_pattern(layer, 2).indices
        assert layer.pattern.is_current()
        torch.testing.assert_close(layer(torch.ones(1, 20)), layer.to_dense()(torch.ones(1, 20)))


def test_checksum_notices_every_single_entry_change():
    pattern = CSRPattern.random(16, 40, 0.7)
    for name in ("indptr", "indices"):
        array = getattr(pattern, name).numpy()
        for k in range(1, array.size):  # indptr[0] changes would be invalid anyway
            old = int(array[k])
            array[k] = old + 1
            assert not pattern.is_current(), (name, k)
            array[k] = old
            assert pattern.is_current()


def test_module_sees_edits_through_the_module_api_too():
    """set_pattern / update_pattern install a new pattern object: caches follow."""
    layer = SparseConv2d(2, 4, 3, sparsity=0.5)
    layer(torch.randn(1, 2, 5, 5))
    assert len(layer._plans) == 1
    sparseprop.update_pattern(layer, torch.rand(4, 2, 3, 3) < 0.3)
    assert len(layer._plans) == 0
