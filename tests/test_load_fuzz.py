"""Fuzz tests (hypothesis) of the state-dict loader and the functional API.

Loader: a valid state dict of another layer of the same shape (another pattern, another
nnz) is mutated key by key: dropped, turned into a list / None / float / 2-D / truncated /
extended / shuffled / strided / replaced by another valid pattern. Whatever the loader
does, it must raise a clear error (ValueError, RuntimeError or TypeError, never e.g. an
AttributeError) and leave the layer exactly as it was, or load every given entry; and
either way the next forward and backward agree with the dense twin.

Functional API: random inputs, values and biases with odd strides (transposed, stepped,
stride-0 expanded, channels-last, offset views) and sometimes a wrong dtype or shape:
the result matches the dense computation or a clear error is raised.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import sparseprop
from sparseprop import CSRPattern, SparseConv2d, SparseLinear
from sparseprop.functional import sparse_conv2d, sparse_linear

from conftest import compare_with_dense

CLEAR_ERRORS = (ValueError, RuntimeError, TypeError)
SETTINGS = settings(max_examples=80, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def _make_layer(kind: str, seed: int, sparsity: float):
    g = torch.Generator().manual_seed(seed)
    if kind == "linear":
        return SparseLinear(10, 6, sparsity=sparsity, generator=g)
    if kind == "linear-nobias":
        return SparseLinear(10, 6, bias=False, sparsity=sparsity, generator=g)
    return SparseConv2d(2, 4, 3, padding=1, sparsity=sparsity, generator=g)


def _input(layer):
    return torch.randn(3, 10) if isinstance(layer, SparseLinear) else torch.randn(2, 2, 5, 5)


def _mutate(value: torch.Tensor, how: str, other: torch.Tensor):
    if how == "drop":
        return None
    mutations = {
        "keep": lambda: value.clone(),
        "list": lambda: value.tolist(),
        "none": lambda: None,
        "float": lambda: value.float(),
        "int64": lambda: value.long() if not value.is_floating_point() else value,
        "2d": lambda: value.reshape(1, -1),
        "truncate": lambda: value[:-1].clone(),
        "extend": lambda: torch.cat([value, value[-1:]]),
        "shuffle": lambda: value[torch.randperm(value.numel())],
        "plus-one": lambda: value + 1,
        "strided": lambda: torch.stack([value, value], dim=1)[:, 0],  # same content, stride 2
        "other": lambda: other.clone(),  # the matching entry of another valid layer
        "empty": lambda: value[:0],
    }
    return mutations[how]()


MUTATIONS = ["keep", "drop", "list", "none", "float", "int64", "2d", "truncate", "extend",
             "shuffle", "plus-one", "strided", "other", "empty"]


def _snapshot(layer):
    return {k: v.clone() for k, v in layer.state_dict().items()}


def _assert_unchanged(layer, before, values_param, x, y_before):
    after = layer.state_dict()
    assert set(after) == set(before)
    for key in before:
        assert after[key].dtype == before[key].dtype and torch.equal(after[key], before[key]), key
    assert layer.values is values_param
    with torch.no_grad():
        assert torch.equal(layer(x), y_before)


def _assert_correct(layer, x):
    if isinstance(layer, SparseLinear):
        compare_with_dense(layer, x.clone().requires_grad_())
        return
    dense = layer.to_dense()
    xs, xd = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, yd = layer(xs), dense(xd)
    torch.testing.assert_close(y, yd, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    yd.sum().backward()
    torch.testing.assert_close(xs.grad, xd.grad, rtol=1e-5, atol=1e-5)


@st.composite
def mutated_state_dicts(draw):
    kind = draw(st.sampled_from(["linear", "linear-nobias", "conv"]))
    source = _make_layer(kind, draw(st.integers(0, 3)), draw(st.sampled_from([0.3, 0.5, 0.8])))
    other = _make_layer(kind, 7, draw(st.sampled_from([0.2, 0.6])))
    base, alt = source.state_dict(), other.state_dict()
    sd = {}
    for key, value in base.items():
        how = draw(st.sampled_from(MUTATIONS))
        mutated = _mutate(value, how, alt[key])
        if how != "drop":
            sd[key] = mutated
    if draw(st.booleans()):
        sd["unexpected"] = torch.zeros(1)
    return kind, sd, draw(st.booleans())


@SETTINGS
@given(mutated_state_dicts())
def test_layer_load_state_dict_is_all_or_nothing(case):
    kind, sd, strict = case
    layer = _make_layer(kind, 11, 0.5)
    x = _input(layer)
    with torch.no_grad():
        y_before = layer(x).clone()
    before, values_param = _snapshot(layer), layer.values
    try:
        layer.load_state_dict(sd, strict=strict)
    except CLEAR_ERRORS as err:
        assert str(err)
        _assert_unchanged(layer, before, values_param, x, y_before)
    else:
        state = layer.state_dict()
        for key, value in sd.items():
            if key in state:
                assert torch.equal(state[key], value.to(state[key].dtype)), key
    _assert_correct(layer, x)


@SETTINGS
@given(mutated_state_dicts(), st.booleans())
def test_nested_loading_keeps_the_sparse_layer_whole(case, safe):
    """Inside a model: plain load_state_dict leaves the sparse layer either fully loaded
    or untouched; safe_load_state_dict leaves the whole model untouched on failure."""
    kind, sd, strict = case
    layer = _make_layer(kind, 11, 0.5)
    head = nn.Identity()
    model = nn.Sequential(head, layer)
    full = {"1." + k: v for k, v in sd.items()}
    x = _input(layer)
    with torch.no_grad():
        y_before = layer(x).clone()
    before, values_param = _snapshot(layer), layer.values
    load = sparseprop.safe_load_state_dict if safe else nn.Module.load_state_dict
    try:
        load(model, full, strict=strict)
    except CLEAR_ERRORS:
        _assert_unchanged(layer, before, values_param, x, y_before)
    _assert_correct(layer, x)


@pytest.mark.parametrize("key", ["indptr", "indices"])
@pytest.mark.parametrize("strict", [True, False])
def test_partial_pattern_names_the_missing_key(key, strict):
    """The issue's case: one pattern buffer without the other."""
    layer = SparseLinear(10, 6, sparsity=0.5)
    sd = SparseLinear(10, 6, sparsity=0.8).state_dict()
    del sd[key]
    other = "indices" if key == "indptr" else "indptr"
    before = _snapshot(layer)
    with pytest.raises(ValueError, match=rf"'{other}' is given without '{key}'"):
        layer.load_state_dict(sd, strict=strict)
    x = torch.randn(4, 10)
    _assert_unchanged(layer, before, layer.values, x, layer(x).detach())
    _assert_correct(layer, x)


def test_list_entry_names_the_key():
    layer = SparseLinear(10, 6, sparsity=0.5)
    sd = layer.state_dict()
    sd["indices"] = sd["indices"].tolist()
    with pytest.raises(ValueError, match="'indices' is a list, expected a tensor"):
        layer.load_state_dict(sd)
    net = nn.Sequential(nn.Linear(2, 10), layer)
    sd = net.state_dict()
    sd["1.values"] = sd["1.values"].tolist()
    with pytest.raises(ValueError, match=r"'1\.values' is a list, expected a tensor"):
        net.load_state_dict(sd)


# --------------------------------------------------------------------------------------
# functional API
# --------------------------------------------------------------------------------------
def _odd_view(draw, shape, dtype=torch.float32):
    """A tensor of ``shape`` laid out in one of several non-trivial ways."""
    layout = draw(st.sampled_from(["contiguous", "transposed", "stepped", "offset", "expanded"]))
    if layout == "transposed" and len(shape) >= 2:
        return torch.randn(*reversed(shape), dtype=dtype).permute(*reversed(range(len(shape))))
    if layout == "stepped":
        return torch.randn(*shape[:-1], 2 * shape[-1], dtype=dtype)[..., ::2]
    if layout == "offset":
        return torch.randn(int(torch.tensor(shape).prod()) + 1, dtype=dtype)[1:].view(shape)
    if layout == "expanded" and shape[0] > 1:
        return torch.randn(1, *shape[1:], dtype=dtype).expand(shape)
    return torch.randn(*shape, dtype=dtype)


@st.composite
def linear_calls(draw):
    rows, cols = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    pattern = CSRPattern.random(rows, cols, draw(st.sampled_from([0.0, 0.5, 0.9, 1.0])),
                                torch.Generator().manual_seed(draw(st.integers(0, 99))))
    lead = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    dtype = draw(st.sampled_from([torch.float32] * 6 + [torch.float64, torch.int32]))
    bad_cols = draw(st.sampled_from([0] * 6 + [1]))
    x = _odd_view(draw, lead + (cols + bad_cols,), dtype if dtype.is_floating_point else torch.float32)
    if not dtype.is_floating_point:
        x = x.to(dtype)
    values = _odd_view(draw, (pattern.nnz,)) if pattern.nnz else torch.randn(0)
    bias = _odd_view(draw, (rows,)) if draw(st.booleans()) else None
    return pattern, x, values, bias


@SETTINGS
@given(linear_calls())
def test_functional_linear_with_odd_strides(call):
    pattern, x, values, bias = call
    x = x.detach().requires_grad_(x.is_floating_point())
    values = values.detach().requires_grad_()
    try:
        y = sparse_linear(x, pattern, values, bias)
    except CLEAR_ERRORS as err:
        assert x.dtype != torch.float32 or x.shape[-1] != pattern.cols, err
        return
    assert x.dtype == torch.float32 and x.shape[-1] == pattern.cols
    xd = x.detach().clone().requires_grad_()
    vd = values.detach().clone().requires_grad_()
    yd = F.linear(xd, pattern.to_dense(vd), bias)
    torch.testing.assert_close(y, yd, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(yd)
    y.backward(grad)
    yd.backward(grad)
    torch.testing.assert_close(x.grad, xd.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values.grad, vd.grad, rtol=1e-4, atol=1e-5)


@st.composite
def conv_calls(draw):
    c_in, c_out, k = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.sampled_from([1, 3]))
    pattern = CSRPattern.random(c_out, c_in * k * k, draw(st.sampled_from([0.0, 0.5, 0.9])),
                                torch.Generator().manual_seed(draw(st.integers(0, 99))))
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(k, k + 4)), draw(st.integers(k, k + 4))
    layout = draw(st.sampled_from(["contiguous", "channels_last", "stepped", "transposed_hw"]))
    if layout == "channels_last":
        x = torch.randn(n, c_in, h, w).contiguous(memory_format=torch.channels_last)
    elif layout == "stepped":
        x = torch.randn(n, c_in, h, 2 * w)[..., ::2]
    elif layout == "transposed_hw":
        x = torch.randn(n, c_in, w, h).transpose(2, 3)
    else:
        x = torch.randn(n, c_in, h, w)
    stride, padding = draw(st.integers(1, 2)), draw(st.integers(0, 1))
    values = _odd_view(draw, (pattern.nnz,)) if pattern.nnz else torch.randn(0)
    bias = _odd_view(draw, (c_out,)) if draw(st.booleans()) else None
    return pattern, x, values, bias, stride, padding


@SETTINGS
@given(conv_calls())
def test_functional_conv_with_odd_strides(call):
    pattern, x, values, bias, stride, padding = call
    c_in = x.shape[1]
    k = int(round((pattern.cols // c_in) ** 0.5))
    x = x.detach().requires_grad_()
    values = values.detach().requires_grad_()
    y = sparse_conv2d(x, pattern, values, bias, stride=stride, padding=padding)
    xd = x.detach().clone().requires_grad_()
    vd = values.detach().clone().requires_grad_()
    weight = pattern.to_dense(vd).view(pattern.rows, c_in, k, k)
    yd = F.conv2d(xd, weight, bias, stride=stride, padding=padding)
    torch.testing.assert_close(y, yd, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(yd)
    y.backward(grad)
    yd.backward(grad)
    torch.testing.assert_close(x.grad, xd.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values.grad, vd.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("nested", [False, True])
def test_non_strict_load_of_pattern_and_values_without_bias(nested):
    """torch always tells _load_from_state_dict strict=True: the layer must not refuse
    entries a non-strict load leaves out."""
    src, dst = SparseLinear(10, 6, sparsity=0.8), SparseLinear(10, 6, sparsity=0.3)
    sd = {k: v for k, v in src.state_dict().items() if k != "bias"}
    bias = dst.bias.detach().clone()
    target = nn.Sequential(dst) if nested else dst
    sd = {("0." if nested else "") + k: v for k, v in sd.items()}
    missing, _ = target.load_state_dict(sd, strict=False)
    assert missing == [("0." if nested else "") + "bias"]
    assert torch.equal(dst.indices, src.indices) and torch.equal(dst.bias, bias)
    _assert_correct(dst, torch.randn(3, 10))
