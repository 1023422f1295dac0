"""Numerical oracle: SparseLinear (and functional.sparse_linear) against the masked
dense nn.Linear, on every kernel path this CPU can run."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import sparseprop
from sparseprop import CSRPattern, SparseLinear
from sparseprop.functional import sparse_linear

from conftest import ISAS, clone_input, compare_with_dense, dense_reference, make_linear, tol

SHAPES = [(1, 1), (3, 5), (17, 33), (64, 48), (100, 7), (256, 256)]  # (in, out)
SPARSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]
# 1, 3, 17: tails below one vector; 15/16/17 and 33: around AVX-512 / AVX2 widths;
# 256 and 300: several SpMM and SDDMM batch blocks plus a partial one.
BATCHES = [1, 3, 15, 16, 17, 33, 256, 300]
# Batch-block edges: AVX2 SpMM block 32, SDDMM 64; AVX-512 SpMM 64, SDDMM 128; scalar 8.
BLOCK_EDGE_BATCHES = [7, 8, 9, 31, 32, 63, 64, 65, 127, 128, 129, 255, 257, 513]


def _id_shape(shape):
    return f"{shape[0]}x{shape[1]}"


# --------------------------------------------------------------------------------------
# the core grid
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("shape", SHAPES, ids=_id_shape)
def test_matches_dense_grid(isa, shape, sparsity):
    in_f, out_f = shape
    m = SparseLinear(in_f, out_f, sparsity=sparsity)
    assert m.nnz == round((1 - sparsity) * in_f * out_f)
    dense = dense_reference(m)
    for batch in BATCHES:
        x = torch.randn(batch, in_f, requires_grad=True)
        compare_with_dense(m, x, dense=dense, what=f"[{isa} {shape} s={sparsity} batch={batch}]")


@pytest.mark.parametrize("shape,sparsity", [((64, 48), 0.5), ((17, 33), 0.0), ((5, 3), 0.9)],
                         ids=["64x48-s0.5", "17x33-s0", "5x3-s0.9"])
def test_batch_block_edges(isa, shape, sparsity):
    m = SparseLinear(*shape, sparsity=sparsity)
    dense = dense_reference(m)
    for batch in BLOCK_EDGE_BATCHES:
        x = torch.randn(batch, shape[0], requires_grad=True)
        compare_with_dense(m, x, dense=dense, what=f"[{isa} {shape} batch={batch}]")


def test_isas_agree_with_each_other():
    """Every path computes the same function (up to float32 summation order)."""
    m = SparseLinear(64, 48, sparsity=0.7)
    x = torch.randn(37, 64)
    gy = torch.randn(37, 48)
    results = {}
    for name in ISAS:
        with sparseprop.use_isa(name):
            m.zero_grad(set_to_none=True)
            xi = x.clone().requires_grad_()
            y = m(xi)
            y.backward(gy)
            results[name] = (y.detach(), xi.grad, m.values.grad.clone(), m.bias.grad.clone())
    ref = results["scalar"]
    for name, got in results.items():
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, **tol(64), msg=lambda s: f"{name} vs scalar: {s}")


# --------------------------------------------------------------------------------------
# input ranks and layouts
# --------------------------------------------------------------------------------------
def test_input_1d(isa):
    m = SparseLinear(17, 33, sparsity=0.5)
    x = torch.randn(17, requires_grad=True)
    y = m(x)
    assert y.shape == (33,)
    compare_with_dense(m, x, what="1-D")


@pytest.mark.parametrize("lead", [(2, 5), (1, 1), (3, 1), (4, 17), (2, 3, 4)])
def test_input_nd(isa, lead):
    m = SparseLinear(17, 9, sparsity=0.6)
    x = torch.randn(*lead, 17, requires_grad=True)
    assert m(x).shape == (*lead, 9)
    compare_with_dense(m, x, what=f"lead={lead}")


def _compare_views(m, make_view, base_shape, grad_view=None):
    """Feed make_view(base) to the sparse and dense layers; compare via the base's grad."""
    dense = dense_reference(m)
    base = torch.randn(*base_shape, requires_grad=True)
    base_d = clone_input(base)
    x, xd = make_view(base), make_view(base_d)
    y, yd = m(x), dense(xd)
    torch.testing.assert_close(y, yd, **tol(m.in_features))
    gy = torch.randn_like(yd) if grad_view is None else grad_view(yd.shape)
    y.backward(gy)
    yd.backward(gy)
    torch.testing.assert_close(base.grad, base_d.grad, **tol(m.out_features))
    torch.testing.assert_close(m.values.grad, m.pattern.gather(dense.weight.grad), **tol(x.numel()))
    torch.testing.assert_close(m.bias.grad, dense.bias.grad, **tol(x.numel()))


VIEWS = {
    # name: (base shape from (n, in), view function)
    "transposed": (lambda n, i: (i, n), lambda b: b.t()),
    "column-step-2": (lambda n, i: (n, 2 * i), lambda b: b[:, ::2]),
    "row-step-2": (lambda n, i: (2 * n, i), lambda b: b[::2]),
    "column-offset": (lambda n, i: (n, i + 3), lambda b: b[:, 3:]),
    "expanded-stride-0": (lambda n, i: (1, i), None),  # filled in below (needs n)
    "3d-permuted": (lambda n, i: (n, 2, i), lambda b: b.transpose(0, 1)),
    # feature-major views (what a previous sparse layer returns), sliced
    "feature-major-offset": (lambda n, i: (i + 3, n), lambda b: b.t()[:, 3:]),
    "feature-major-batch-step-2": (lambda n, i: (i, 2 * n), lambda b: b.t()[::2]),
    "3d-feature-last-strided": (lambda n, i: (2, i, n), lambda b: b.transpose(1, 2)),
}


@pytest.mark.parametrize("view", sorted(VIEWS))
@pytest.mark.parametrize("batch", [1, 5, 17, 40])
def test_noncontiguous_inputs(isa, view, batch):
    in_f, out_f = 19, 11
    m = SparseLinear(in_f, out_f, sparsity=0.5)
    base_shape_fn, fn = VIEWS[view]
    if view == "expanded-stride-0":
        fn = lambda b: b.expand(batch, in_f)  # noqa: E731
    x_probe = fn(torch.empty(base_shape_fn(batch, in_f)))
    assert not x_probe.is_contiguous() or batch == 1 or view == "expanded-stride-0"
    _compare_views(m, fn, base_shape_fn(batch, in_f))


@pytest.mark.parametrize("batch", [1, 2, 3, 16, 17, 33])
@pytest.mark.parametrize("shape", [(1, 1), (17, 1), (1, 17), (19, 11), (64, 48)], ids=_id_shape)
def test_misaligned_views(isa, shape, batch):
    """Input, upstream gradient (and values/bias via functional) start one float past
    an allocation boundary. With batch 1 or a single feature the transposed input is
    passed to the kernels without a copy, so the kernels see the misaligned pointer."""
    in_f, out_f = shape
    m = SparseLinear(in_f, out_f, sparsity=0.3)

    def make_view(base):
        return base[1:].view(batch, in_f)

    def grad_view(out_shape):
        gbuf = torch.randn(batch * out_f + 1)
        g = gbuf[1:].view(out_shape)
        assert g.data_ptr() % 16 == 4  # one float past a (>= 16-byte aligned) allocation
        return g

    x = make_view(torch.empty(batch * in_f + 1))
    assert x.data_ptr() % 16 == 4
    _compare_views(m, make_view, (batch * in_f + 1,), grad_view=grad_view)


def test_misaligned_values_and_bias_functional(isa):
    pattern = CSRPattern.random(33, 17, 0.5)
    vbuf = torch.randn(pattern.nnz + 1, requires_grad=True)
    bbuf = torch.randn(34, requires_grad=True)
    values, bias = vbuf[1:], bbuf[1:]
    x = torch.randn(3, 17, requires_grad=True)
    y = sparse_linear(x, pattern, values, bias)
    vbuf2, bbuf2 = clone_input(vbuf), clone_input(bbuf)
    xd = clone_input(x)
    yd = F.linear(xd, pattern.to_dense(vbuf2[1:]), bbuf2[1:])
    torch.testing.assert_close(y, yd, **tol(17))
    gy = torch.randn(3, 33)
    y.backward(gy)
    yd.backward(gy)
    torch.testing.assert_close(x.grad, xd.grad, **tol(33))
    torch.testing.assert_close(vbuf.grad, vbuf2.grad, **tol(3))
    torch.testing.assert_close(bbuf.grad, bbuf2.grad, **tol(3))
    assert vbuf.grad[0] == 0 and bbuf.grad[0] == 0


# --------------------------------------------------------------------------------------
# autograd modes
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 17])
def test_input_without_requires_grad(isa, batch):
    m = SparseLinear(17, 33, sparsity=0.5)
    x = torch.randn(batch, 17)
    compare_with_dense(m, x, what="x.requires_grad=False")
    assert x.grad is None
    assert m.values.grad is not None and m.bias.grad is not None


def test_frozen_values_still_give_input_grad(isa):
    m = SparseLinear(17, 33, sparsity=0.5)
    m.values.requires_grad_(False)
    dense = dense_reference(m)
    x = torch.randn(5, 17, requires_grad=True)
    xd = clone_input(x)
    gy = torch.randn(5, 33)
    m(x).backward(gy)
    dense(xd).backward(gy)
    assert m.values.grad is None
    torch.testing.assert_close(x.grad, xd.grad, **tol(33))
    torch.testing.assert_close(m.bias.grad, dense.bias.grad, **tol(5))


def test_no_grad(isa):
    m = SparseLinear(17, 33, sparsity=0.5)
    dense = dense_reference(m)
    x = torch.randn(9, 17, requires_grad=True)
    with torch.no_grad():
        y = m(x)
    assert y.grad_fn is None and not y.requires_grad
    torch.testing.assert_close(y, dense(x).detach(), **tol(17))


def test_inference_mode(isa):
    m = SparseLinear(17, 33, sparsity=0.5)
    x = torch.randn(9, 17)
    with torch.inference_mode():
        y = m(x)
    torch.testing.assert_close(y, dense_reference(m)(x).detach(), **tol(17))


@pytest.mark.parametrize("shape", [(1, 1), (17, 33), (64, 48)], ids=_id_shape)
@pytest.mark.parametrize("batch", [1, 17])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_stride0_upstream_gradient(isa, shape, batch, reduce):
    """y.sum().backward() hands the layer an expanded (stride-0) gradient."""
    m = SparseLinear(*shape, sparsity=0.5)
    dense = dense_reference(m)
    x = torch.randn(batch, shape[0], requires_grad=True)
    xd = clone_input(x)
    getattr(m(x), reduce)().backward()
    getattr(dense(xd), reduce)().backward()
    torch.testing.assert_close(x.grad, xd.grad, **tol(shape[1]))
    torch.testing.assert_close(m.values.grad, m.pattern.gather(dense.weight.grad), **tol(batch))
    torch.testing.assert_close(m.bias.grad, dense.bias.grad, **tol(batch))


def test_gradient_accumulates_over_calls(isa):
    m = SparseLinear(17, 33, sparsity=0.5)
    dense = dense_reference(m)
    for _ in range(3):
        x = torch.randn(4, 17)
        m(x).pow(2).sum().backward()
        dense(x).pow(2).sum().backward()
    torch.testing.assert_close(m.values.grad, m.pattern.gather(dense.weight.grad), **tol(12))
    torch.testing.assert_close(m.bias.grad, dense.bias.grad, **tol(12))


def test_double_backward_raises(isa):
    m = SparseLinear(17, 33, sparsity=0.5)
    x = torch.randn(4, 17, requires_grad=True)
    (gx,) = torch.autograd.grad(m(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="twice|once_differentiable|double"):
        gx.sum().backward()


@pytest.mark.filterwarnings("ignore:Input #.* requires gradient and is not a double")
def test_gradcheck_float32_small(isa):
    """Finite differences on a tiny problem (float32, so loose tolerances)."""
    pattern = CSRPattern.random(4, 5, 0.4)
    values = torch.randn(pattern.nnz, requires_grad=True)
    bias = torch.randn(4, requires_grad=True)
    x = torch.randn(3, 5, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, v, b: sparse_linear(a, pattern, v, b), (x, values, bias),
                                    eps=1e-2, atol=1e-2, rtol=1e-2)


# --------------------------------------------------------------------------------------
# threads
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,sparsity,batch", [((256, 256), 0.5, 64), ((256, 256), 0.9, 300),
                                                  ((64, 48), 0.0, 1000), ((100, 7), 0.5, 17)])
def test_thread_count_is_bitwise_irrelevant(isa, shape, sparsity, batch):
    m = SparseLinear(*shape, sparsity=sparsity)
    x0 = torch.randn(batch, shape[0])
    gy = torch.randn(batch, shape[1])
    results = []
    for threads in (1, 2, 1, 2):
        sparseprop.set_num_threads(threads)
        assert sparseprop.get_num_threads() == threads
        m.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_()
        y = m(x)
        y.backward(gy)
        results.append((y.detach().clone(), x.grad, m.values.grad.clone(), m.bias.grad.clone()))
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            assert torch.equal(a, b)


# --------------------------------------------------------------------------------------
# networks and module variants
# --------------------------------------------------------------------------------------
def test_chained_layers_match_dense_chain(isa):
    l1 = SparseLinear(64, 48, sparsity=0.8)
    l2 = SparseLinear(48, 10, sparsity=0.5)
    sparse_net = nn.Sequential(l1, nn.ReLU(), l2)
    d1, d2 = dense_reference(l1), dense_reference(l2)
    dense_net = nn.Sequential(d1, nn.ReLU(), d2)
    for batch in (1, 17, 300):
        sparse_net.zero_grad(set_to_none=True)
        dense_net.zero_grad(set_to_none=True)
        x = torch.randn(batch, 64, requires_grad=True)
        xd = clone_input(x)
        y, yd = sparse_net(x), dense_net(xd)
        torch.testing.assert_close(y, yd, **tol(64))
        gy = torch.randn_like(yd)
        y.backward(gy)
        yd.backward(gy)
        torch.testing.assert_close(x.grad, xd.grad, **tol(48))
        for s, d in ((l1, d1), (l2, d2)):
            torch.testing.assert_close(s.values.grad, s.pattern.gather(d.weight.grad), **tol(batch))
            torch.testing.assert_close(s.bias.grad, d.bias.grad, **tol(batch))


@pytest.mark.parametrize("lead", [(), (1,), (4,), (2, 3)], ids=["1d", "1x", "4x", "2x3x"])
def test_inplace_op_on_output_like_nn_linear(lead):
    """nn.Linear's output can be modified in place (nn.ReLU(inplace=True), y += b, ...)
    and gradients flow as usual; a drop-in replacement must allow the same."""
    m = SparseLinear(8, 6, sparsity=0.5)
    dense = dense_reference(m)
    x = torch.randn(*lead, 8, requires_grad=True)
    xd = clone_input(x)
    y = m(x)
    y.mul_(2.0).relu_()
    yd = dense(xd).mul_(2.0).relu_()
    torch.testing.assert_close(y, yd, **tol(8))
    y.sum().backward()
    yd.sum().backward()
    torch.testing.assert_close(x.grad, xd.grad, **tol(6))
    torch.testing.assert_close(m.values.grad, m.pattern.gather(dense.weight.grad), **tol(8))


def test_sequential_with_inplace_relu_module():
    l1, l2 = SparseLinear(32, 24, sparsity=0.5), SparseLinear(24, 8, sparsity=0.5)
    d1, d2 = dense_reference(l1), dense_reference(l2)
    net = nn.Sequential(l1, nn.ReLU(inplace=True), l2)
    dense_net = nn.Sequential(d1, nn.ReLU(inplace=True), d2)
    x = torch.randn(9, 32)
    y, yd = net(x), dense_net(x)
    torch.testing.assert_close(y, yd, **tol(32))
    y.sum().backward()
    yd.sum().backward()
    torch.testing.assert_close(l1.values.grad, l1.pattern.gather(d1.weight.grad), **tol(9))


def test_no_bias_constructor():
    m = SparseLinear(17, 33, bias=False, sparsity=0.5)
    assert m.bias is None
    assert "bias" not in dict(m.named_parameters())
    dense = dense_reference(m)
    assert dense.bias is None
    for batch in (1, 3, 17, 300):
        compare_with_dense(m, torch.randn(batch, 17, requires_grad=True), dense=dense)


@pytest.mark.parametrize("batch", [1, 3, 17, 300])
def test_no_bias_kernel_path(isa, batch):
    """The bias-free kernel path, with the bias dropped after construction."""
    m = make_linear(17, 33, bias=False, sparsity=0.5)
    assert m.bias is None and "bias" not in m.state_dict()
    dense = dense_reference(m)
    assert dense.bias is None
    compare_with_dense(m, torch.randn(batch, 17, requires_grad=True), dense=dense)


@pytest.mark.parametrize("lead", [(0,), (2, 0), (0, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_empty_batch(isa, lead, bias):
    m = make_linear(17, 33, bias=bias, sparsity=0.5)
    x = torch.randn(*lead, 17, requires_grad=True)
    y = m(x)
    assert y.shape == (*lead, 33)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert m.values.grad is not None and torch.equal(m.values.grad, torch.zeros(m.nnz))
    if bias:
        assert torch.equal(m.bias.grad, torch.zeros(33))


def test_empty_batch_values_grad_overwrites_garbage(isa):
    """The zero-row SDDMM must write zeros, not leave torch.empty garbage."""
    m = SparseLinear(64, 48, sparsity=0.0)
    for _ in range(3):
        m.zero_grad(set_to_none=True)
        m(torch.randn(0, 64)).backward(torch.randn(0, 48))
        assert torch.equal(m.values.grad, torch.zeros(m.nnz))


@pytest.mark.parametrize("batch", [1, 9, 130])
def test_leaf_input_grad_is_contiguous(isa, batch):
    """Like nn.Linear, a leaf input gets a contiguous (N, in) .grad."""
    m = SparseLinear(19, 11, sparsity=0.5)
    x = torch.randn(batch, 19, requires_grad=True)
    m(x).sum().backward()
    assert x.grad.shape == x.shape and x.grad.is_contiguous()


def test_zero_out_features(isa):
    m = SparseLinear(7, 0, sparsity=0.5)
    x = torch.randn(3, 7, requires_grad=True)
    y = m(x)
    assert y.shape == (3, 0)
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros(3, 7))


def test_zero_in_features():
    """nn.Linear(0, 4) maps a (3, 0) input to the broadcast bias; so should SparseLinear."""
    m = SparseLinear(0, 4, sparsity=0.5)
    x = torch.randn(3, 0)
    y = m(x)
    assert y.shape == (3, 4)
    torch.testing.assert_close(y, m.bias.detach().expand(3, 4))


def test_fully_sparse_layer_is_bias(isa):
    m = SparseLinear(17, 33, sparsity=1.0)
    assert m.nnz == 0
    x = torch.randn(5, 17, requires_grad=True)
    y = m(x)
    torch.testing.assert_close(y, m.bias.detach().expand(5, 33), rtol=0, atol=0)
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros(5, 17))
    assert m.values.grad.shape == (0,)
    torch.testing.assert_close(m.bias.grad, torch.full((33,), 5.0))


def test_special_values_propagate(isa):
    """inf / nan in an input column the pattern uses shows up in the output rows that use it."""
    pattern = CSRPattern.from_mask(torch.tensor([[1, 0, 0], [0, 1, 0]]))
    values = torch.ones(2)
    x = torch.tensor([[float("nan"), 1.0, 5.0], [1.0, float("inf"), 5.0]])
    y = sparse_linear(x, pattern, values)
    assert torch.isnan(y[0, 0]) and y[0, 1] == 1.0
    assert y[1, 0] == 1.0 and torch.isinf(y[1, 1])


# --------------------------------------------------------------------------------------
# functional API against an autograd oracle independent of SparseLinear
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 5), (33, 17), (48, 64)], ids=_id_shape)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95])
@pytest.mark.parametrize("batch", [1, 16, 70])
def test_functional_matches_dense_autograd(isa, shape, sparsity, batch):
    out_f, in_f = shape
    pattern = CSRPattern.random(out_f, in_f, sparsity)
    values = torch.randn(pattern.nnz, requires_grad=True)
    bias = torch.randn(out_f, requires_grad=True)
    x = torch.randn(batch, in_f, requires_grad=True)
    vd, bd, xd = clone_input(values), clone_input(bias), clone_input(x)
    y = sparse_linear(x, pattern, values, bias)
    yd = F.linear(xd, pattern.to_dense(vd), bd)
    torch.testing.assert_close(y, yd, **tol(in_f))
    gy = torch.randn_like(yd)
    y.backward(gy)
    yd.backward(gy)
    torch.testing.assert_close(x.grad, xd.grad, **tol(out_f))
    torch.testing.assert_close(values.grad, vd.grad, **tol(batch))
    torch.testing.assert_close(bias.grad, bd.grad, **tol(batch))


def test_functional_non_leaf_values(isa):
    """values may be the output of other ops (e.g. a reparametrization)."""
    pattern = CSRPattern.random(9, 13, 0.5)
    raw = torch.randn(2 * pattern.nnz, requires_grad=True)
    raw_d = clone_input(raw)
    x = torch.randn(6, 13)
    y = sparse_linear(x, pattern, (raw * 2)[::2])
    yd = F.linear(x, pattern.to_dense((raw_d * 2)[::2]))
    torch.testing.assert_close(y, yd, **tol(13))
    y.pow(2).sum().backward()
    yd.pow(2).sum().backward()
    torch.testing.assert_close(raw.grad, raw_d.grad, **tol(6))


# --------------------------------------------------------------------------------------
# property test
# --------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(in_f=st.integers(1, 40), out_f=st.integers(1, 40), batch=st.integers(0, 140),
       sparsity=st.floats(0.0, 1.0, allow_nan=False), bias=st.booleans(),
       isa_name=st.sampled_from(ISAS), seed=st.integers(0, 2**31 - 1))
def test_property_matches_dense(in_f, out_f, batch, sparsity, bias, isa_name, seed):
    g = torch.Generator().manual_seed(seed)
    m = make_linear(in_f, out_f, bias=bias, sparsity=sparsity, generator=g)
    assert m.nnz == round((1 - sparsity) * in_f * out_f)
    x = torch.randn(batch, in_f, generator=g, requires_grad=True)
    gy = torch.randn(batch, out_f, generator=g)
    with sparseprop.use_isa(isa_name):
        compare_with_dense(m, x, grad_out=gy, what=f"[{isa_name}]")
