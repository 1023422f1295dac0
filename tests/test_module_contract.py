"""The nn.Module contract every sparse layer keeps, run for SparseLinear and SparseConv2d
alike: state_dict contents and round trips, checkpoints, pickle and deepcopy, seeded
construction, the differentiable dense ``weight``. Each check ends with the masked dense
twin (``to_dense()``) as the oracle for the output and every gradient.

Kind-specific behaviour stays with its layer: tests/test_module.py (SparseLinear, CSRPattern)
and tests/test_conv*.py (SparseConv2d)."""
from __future__ import annotations

import copy
import io
import pickle
from dataclasses import dataclass
from typing import Callable, Tuple

import pytest
import torch
from torch import nn

from sparseprop import CSRPattern, SparseConv2d, SparseLinear

from conftest import assert_same_sparse_module, compare_with_dense, outputs

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny layers, and a 1-thread dense oracle


@dataclass(frozen=True)
class Kind:
    """How to build one sparse layer class and feed it."""
    name: str
    cls: type
    build: Callable[..., nn.Module]          # (sparsity, bias, seed) -> layer
    input_shape: Callable[[int], Tuple[int, ...]]
    hyperparameters: Tuple[str, ...]

    def make(self, sparsity: float = 0.6, bias: bool = True, seed: int = 0) -> nn.Module:
        return self.build(sparsity, bias, torch.Generator().manual_seed(seed))

    def x(self, batch: int = 3, requires_grad: bool = False) -> torch.Tensor:
        return torch.randn(*self.input_shape(batch), requires_grad=requires_grad)


KINDS = {
    "linear": Kind("linear", SparseLinear,
                   lambda s, b, g: SparseLinear(12, 7, bias=b, sparsity=s, generator=g),
                   lambda n: (n, 12), ("in_features", "out_features")),
    "conv": Kind("conv", SparseConv2d,
                 lambda s, b, g: SparseConv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=b,
                                              sparsity=s, generator=g),
                 lambda n: (n, 4, 7, 8),
                 ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                  "groups", "padding_mode")),
}


@pytest.fixture(params=list(KINDS))
def kind(request) -> Kind:
    return KINDS[request.param]


def assert_same_configuration(a: nn.Module, b: nn.Module, kind: Kind) -> None:
    assert type(a) is type(b)
    for name in kind.hyperparameters:
        assert getattr(a, name) == getattr(b, name), name
    assert (a.bias is None) == (b.bias is None)


def check_against_dense(module: nn.Module, kind: Kind, what: str = "") -> None:
    compare_with_dense(module, kind.x(2, requires_grad=True), what=what)


# --------------------------------------------------------------------------------------
# state_dict
# --------------------------------------------------------------------------------------
def test_state_dict_contents(kind):
    m = kind.make()
    sd = m.state_dict()
    rows = m.weight_shape[0]
    assert set(sd) == {"values", "bias", "indptr", "indices"}
    assert sd["indptr"].dtype == torch.int64 and sd["indptr"].shape == (rows + 1,)
    assert sd["indices"].dtype == torch.int32 and sd["indices"].shape == (m.nnz,)
    assert sd["values"].shape == (m.nnz,) and sd["bias"].shape == (rows,)
    # derived data (transposed pattern, index plans) is neither saved nor a buffer
    m(kind.x())
    assert set(dict(m.named_buffers())) == {"indptr", "indices"}
    assert [n for n, _ in m.named_parameters()] == ["values", "bias"]


@pytest.mark.parametrize("target_sparsity", [0.6, 0.3, 0.95, 1.0, 0.0])
def test_state_dict_round_trip_into_fresh_module(kind, target_sparsity):
    src = kind.make(0.6, seed=1)
    dst = kind.make(target_sparsity, seed=2)
    if target_sparsity == 0.6:
        assert not torch.equal(src.indices, dst.indices), "patterns should differ before loading"
    x = kind.x()
    dst(x).sum().backward()  # derived data (plans, transposed pattern) for the old pattern
    result = dst.load_state_dict(src.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    assert dst.nnz == src.nnz
    assert_same_sparse_module(src, dst, x)
    assert_same_sparse_module(src, dst, kind.x(5))
    check_against_dense(dst, kind, "after load_state_dict")  # rebuilt for the new pattern


def test_state_dict_round_trip_bias_free(kind):
    src, dst = kind.make(0.4, bias=False, seed=1), kind.make(0.8, bias=False, seed=2)
    dst.load_state_dict(src.state_dict())
    assert dst.bias is None
    assert_same_sparse_module(src, dst, kind.x())
    check_against_dense(dst, kind)


def test_state_dict_into_nested_model(kind):
    def net(seed):
        return nn.Sequential(kind.make(0.5, seed=seed), nn.ReLU())
    a, b = net(0), net(1)
    x = kind.x()
    b(x)
    b.load_state_dict(a.state_dict())
    assert torch.equal(outputs(a, x), outputs(b, x))


def test_load_state_dict_copies_instead_of_aliasing(kind):
    """After b.load_state_dict(a.state_dict()), b owns its pattern: a later (valid)
    in-place edit of a's pattern must not change b (nn.Linear copies into its own
    storage; sparse layers do too)."""
    a, b = kind.make(0.5, seed=0), kind.make(0.5, seed=1)
    b.load_state_dict(a.state_dict())
    x = kind.x()
    before = outputs(b, x)
    assert b.indices.data_ptr() != a.indices.data_ptr(), "b.indices aliases a.indices"
    assert b.indptr.data_ptr() != a.indptr.data_ptr(), "b.indptr aliases a.indptr"
    # a valid edit of a: move the first nonzero of row 0 to a free column
    s, e = int(a.indptr[0]), int(a.indptr[1])
    used = set(a.indices[s:e].tolist())
    free = min(c for c in range(a.pattern_shape[1]) if c not in used)
    a.indices[s:e] = torch.tensor(sorted((used - {min(used)}) | {free}), dtype=torch.int32)
    a(x)  # a revalidates fine
    assert torch.equal(outputs(b, x), before), "editing a's pattern changed b"


# --------------------------------------------------------------------------------------
# serialization and copies
# --------------------------------------------------------------------------------------
def test_torch_save_load_state_dict_weights_only(kind):
    src = kind.make(0.8)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst = kind.make(0.1, seed=5)
    dst.load_state_dict(torch.load(buf, weights_only=True))
    assert_same_sparse_module(src, dst, kind.x(5))


def test_torch_save_load_whole_module(kind):
    src = kind.make(0.8)
    src(kind.x(2)).sum().backward()  # grads and derived data present when saved
    buf = io.BytesIO()
    torch.save(src, buf)
    buf.seek(0)
    dst = torch.load(buf, weights_only=False)
    assert_same_configuration(src, dst, kind)
    assert_same_sparse_module(src, dst, kind.x(5))
    check_against_dense(dst, kind)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_pickle_round_trip(kind, protocol):
    src = kind.make()
    src(kind.x())  # cached derived data must not break pickling
    dst = pickle.loads(pickle.dumps(src, protocol=protocol))
    assert_same_configuration(src, dst, kind)
    assert_same_sparse_module(src, dst, kind.x(5))
    check_against_dense(dst, kind)


def test_deepcopy_is_equal_and_independent(kind):
    src = kind.make()
    x = kind.x()
    ref = outputs(src, x)
    dst = copy.deepcopy(src)
    assert_same_configuration(src, dst, kind)
    assert_same_sparse_module(src, dst, x)
    for name, buf in src.named_buffers():
        assert buf.data_ptr() != dict(dst.named_buffers())[name].data_ptr(), name
    assert dst.values is not src.values
    # training the copy leaves the original alone
    opt = torch.optim.SGD(dst.parameters(), lr=0.1)
    dst(x).pow(2).sum().backward()
    opt.step()
    assert src.values.grad is None
    assert torch.equal(outputs(src, x), ref)
    # a new pattern on the copy leaves the original (and its derived data) alone, and a
    # valid in-place edit of the original leaves the copy alone
    p = CSRPattern.random(*dst.pattern_shape, 0.2, generator=torch.Generator().manual_seed(3))
    dst.set_pattern(p, torch.randn(p.nnz))
    assert torch.equal(outputs(src, x), ref)
    copy_out = outputs(dst, x)
    other = CSRPattern.random(*src.pattern_shape, 0.6, generator=torch.Generator().manual_seed(4))
    assert other.nnz == src.nnz  # same shape and sparsity: an edit in place is valid
    src.indptr.copy_(other.indptr)
    src.indices.copy_(other.indices)
    src(x)
    assert torch.equal(outputs(dst, x), copy_out)
    check_against_dense(dst, kind, "copy")
    check_against_dense(src, kind, "original")


# --------------------------------------------------------------------------------------
# construction and the dense view
# --------------------------------------------------------------------------------------
def test_generator_makes_construction_reproducible(kind):
    a, b, c = kind.make(0.7, seed=7), kind.make(0.7, seed=7), kind.make(0.7, seed=8)
    assert_same_sparse_module(a, b, kind.x(2))
    assert not torch.equal(a.indices, c.indices) or not torch.equal(a.indptr, c.indptr)


def test_weight_is_differentiable_wrt_values(kind):
    m = kind.make(0.5)
    coeff = torch.randn(m.weight_shape)
    (m.weight * coeff).sum().backward()
    assert torch.equal(m.values.grad, m.pattern.gather(coeff.flatten(1)))
    assert torch.equal(m.weight.detach().flatten(1)[~m.pattern.mask()],
                       torch.zeros(m.pattern_shape[0] * m.pattern_shape[1] - m.nnz))
