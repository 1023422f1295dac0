"""SparseConv2d as an nn.Module (conversions, properties; the contract it shares with
SparseLinear is in tests/test_module_contract.py) and its bad-input contract: every bad
argument or input raises a clear exception naming the problem, and a rejected checkpoint
leaves the module as it was."""
from __future__ import annotations

import math
import re
import textwrap

import pytest
import torch
from torch import nn

from sparseprop import CSRPattern, SparseConv2d

from conftest import outputs, run_python, tol
from test_conv import compare_conv, dense_oracle_single_threaded  # noqa: F401 (autouse fixture)


HYPER = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
         "padding_mode")


def _same_hyperparameters(a, b):
    for name in HYPER:
        assert getattr(a, name) == getattr(b, name), name
    assert (a.bias is None) == (b.bias is None)


@pytest.fixture
def conv():
    return SparseConv2d(4, 6, 3, stride=2, padding=1, sparsity=0.5,
                        generator=torch.Generator().manual_seed(11))


# --------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    dict(in_channels=4, out_channels=6, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=(1, 3), groups=2),
    dict(in_channels=3, out_channels=6, kernel_size=(5, 2), groups=3),
], ids=["3x3", "1x3-g2", "depthwise-5x2"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9, 1.0])
def test_shapes_nnz_sparsity_and_weight(kwargs, sparsity):
    m = SparseConv2d(sparsity=sparsity, **kwargs)
    d = nn.Conv2d(**kwargs)
    numel = d.weight.numel()
    assert m.weight.shape == d.weight.shape
    assert m.pattern.shape == (d.weight.shape[0], math.prod(d.weight.shape[1:]))
    assert m.nnz == m.values.numel() == round((1 - sparsity) * numel)
    assert m.sparsity == pytest.approx(1 - m.nnz / numel)
    assert m.values.dim() == 1 and m.values.dtype == torch.float32
    assert m.indptr.dtype == torch.int64 and m.indices.dtype == torch.int32
    assert [n for n, _ in m.named_parameters()] == ["values", "bias"]
    w = m.weight.detach()
    mask = m.pattern.mask().view(w.shape)
    assert torch.equal(w[~mask], torch.zeros(int((~mask).sum())))
    # the CSR order is weight.flatten(1) order
    assert torch.equal(m.pattern.gather(w.flatten(1)), m.values.detach())
    assert int((w != 0).sum()) <= m.nnz


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(stride=2, padding=1),
    dict(padding=(2, 1), dilation=(2, 1), groups=2),
    dict(padding="same", bias=False),
], ids=["default", "s2-p1", "p2x1-d2x1-g2", "same-nobias"])
def test_extra_repr(kwargs):
    m = SparseConv2d(4, 6, 3, sparsity=0.75, **kwargs)
    text = m.extra_repr()
    assert f"sparsity={m.sparsity:.4f}" in text and f"nnz={m.nnz}" in text
    assert m.nnz == round(0.25 * math.prod(m.weight_shape))
    # everything nn.Conv2d shows comes first (up to quoting), the sparse facts after it
    dense_text = nn.Conv2d(4, 6, 3, **kwargs).extra_repr()
    assert text.replace("'", "").startswith(dense_text), (text, dense_text)
    assert repr(m).startswith("SparseConv2d(4, 6, kernel_size=(3, 3)")


def test_extra_repr_padding_mode():
    m = SparseConv2d(4, 6, 3, padding=1, padding_mode="reflect", sparsity=0.5)
    assert "reflect" in m.extra_repr() and "nnz=" in m.extra_repr()


# state_dict, checkpoints, pickle, deepcopy, seeded construction: tests/test_module_contract.py
# (run for SparseLinear and SparseConv2d alike).


# --------------------------------------------------------------------------------------
# from_dense / to_dense
# --------------------------------------------------------------------------------------
DENSE_VARIANTS = {
    "plain": dict(in_channels=4, out_channels=6, kernel_size=3),
    "strided-padded": dict(in_channels=4, out_channels=6, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2)),
    "same-dilated-grouped": dict(in_channels=4, out_channels=6, kernel_size=3, padding="same", dilation=2,
                                 groups=2),
    "valid-nobias": dict(in_channels=3, out_channels=3, kernel_size=2, padding="valid", bias=False, groups=3),
    "reflect": dict(in_channels=4, out_channels=2, kernel_size=3, padding=1, padding_mode="reflect"),
    "circular": dict(in_channels=4, out_channels=2, kernel_size=3, padding=(1, 2), padding_mode="circular"),
}


@pytest.mark.parametrize("variant", sorted(DENSE_VARIANTS))
def test_from_dense_keeps_nonzeros_and_options(variant):
    d = nn.Conv2d(**DENSE_VARIANTS[variant])
    with torch.no_grad():
        d.weight.mul_(torch.rand(d.weight.shape) < 0.6)  # some exact zeros
    m = SparseConv2d.from_dense(d)
    _same_hyperparameters(d, m)
    assert m.nnz == int((d.weight != 0).sum())
    assert torch.equal(m.weight.detach(), d.weight.detach())
    x = torch.randn(2, d.in_channels, 9, 8)
    torch.testing.assert_close(outputs(m, x), d(x).detach(), **tol(36))
    back = m.to_dense()
    _same_hyperparameters(d, back)
    assert torch.equal(back.weight, d.weight)
    if d.bias is not None:
        assert torch.equal(back.bias, d.bias)
    assert torch.equal(back(x), d(x))


def test_from_dense_with_mask_keeps_exact_zeros():
    d = nn.Conv2d(4, 6, 3, padding=1)
    mask = torch.rand(d.weight.shape) < 0.4
    with torch.no_grad():
        d.weight[mask.nonzero()[0].unbind()] = 0.0  # an exact zero inside the mask
    m = SparseConv2d.from_dense(d, mask=mask)
    assert m.nnz == int(mask.sum())
    assert torch.equal(m.pattern.mask().view(mask.shape), mask)
    assert torch.equal(m.weight.detach(), d.weight.detach() * mask)
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(outputs(m, x), nn.functional.conv2d(x, d.weight * mask, d.bias, padding=1),
                               **tol(36))


@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.5, 0.9, 1.0])
def test_from_dense_with_sparsity_is_exact_magnitude_pruning(sparsity):
    d = nn.Conv2d(4, 6, 3, groups=2)
    m = SparseConv2d.from_dense(d, sparsity=sparsity)
    numel = d.weight.numel()
    assert m.nnz == round((1 - sparsity) * numel)
    kept = m.pattern.mask().view(d.weight.shape)
    if 0 < m.nnz < numel:
        assert d.weight.abs()[kept].min() >= d.weight.abs()[~kept].max()
    assert torch.equal(m.weight.detach(), d.weight.detach() * kept)


def test_from_dense_with_mask_and_sparsity():
    d = nn.Conv2d(4, 6, 3)
    mask = torch.rand(d.weight.shape) < 0.5
    m = SparseConv2d.from_dense(d, mask=mask, sparsity=0.8)
    kept = m.pattern.mask().view(d.weight.shape)
    assert m.nnz == min(round(0.2 * d.weight.numel()), int(mask.sum()))
    assert not (kept & ~mask).any()


def test_to_dense_is_independent(conv):
    d = conv.to_dense()
    with torch.no_grad():
        d.weight.add_(1.0)
        d.bias.add_(1.0)
    assert torch.equal(conv.to_dense().weight, conv.weight.detach())
    assert not torch.equal(conv.to_dense().weight, d.weight)


# --------------------------------------------------------------------------------------
# bad forward inputs
# --------------------------------------------------------------------------------------
def _shape_re(shape):
    return re.escape(str(tuple(shape)))


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 5, 8, 8), (3, 8, 8), (1, 8, 8, 4)])
def test_wrong_channel_count(conv, shape):
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\).*" + _shape_re(shape)):
        conv(torch.randn(*shape))


@pytest.mark.parametrize("shape", [(4, 8), (8,), (), (2, 4, 8, 8, 1), (1, 2, 4, 8, 8)])
def test_wrong_rank(conv, shape):
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\) or \(4, H, W\).*" + _shape_re(shape)):
        conv(torch.randn(shape))


@pytest.mark.parametrize("kwargs,size", [
    (dict(kernel_size=5), (4, 4)),
    (dict(kernel_size=5), (8, 4)),
    (dict(kernel_size=3, dilation=3), (6, 6)),
    (dict(kernel_size=(1, 7), padding=(0, 1)), (9, 4)),
    (dict(kernel_size=3, stride=2, padding="valid"), (2, 9)),
], ids=["5x5-on-4x4", "5x5-on-8x4", "dilated-on-6x6", "1x7-on-4-padded-6", "valid-on-2-rows"])
def test_kernel_larger_than_input(kwargs, size):
    m = SparseConv2d(2, 3, sparsity=0.5, **kwargs)
    x = torch.randn(2, 2, *size)
    with pytest.raises(RuntimeError):
        nn.Conv2d(2, 3, **kwargs)(x)  # the dense layer refuses too
    with pytest.raises(ValueError, match=r"kernel.*larger than the padded input"):
        m(x)
    with pytest.raises(ValueError, match=r"kernel.*input"):
        m(x[0])


# float64 input on a float32 layer does not mix (the float64 path wants all float64);
# bfloat16/float16 inputs are accepted (tests/test_conv_dtypes.py).
@pytest.mark.parametrize("dtype", [torch.float64, torch.int64, torch.int32, torch.uint8, torch.bool])
def test_wrong_input_dtype(conv, dtype):
    with pytest.raises(TypeError, match=r"float32.*" + re.escape(str(dtype))):
        conv(torch.zeros(2, 4, 8, 8, dtype=dtype))


def test_non_tensor_input(conv):
    with pytest.raises(TypeError, match="torch.Tensor"):
        conv([[[[0.0] * 8] * 8] * 4])


def test_meta_device_input(conv):
    with pytest.raises(ValueError, match="CPU.*meta|meta.*CPU"):
        conv(torch.empty(2, 4, 8, 8, device="meta"))


def test_module_cast_to_double_fails_clearly(conv):
    conv.double()  # float64 is a path of its own: a float32 input does not mix with it
    with pytest.raises(TypeError, match="must all be float64"):
        conv(torch.randn(2, 4, 8, 8))


def test_values_replaced_with_wrong_length(conv):
    conv.values.data = torch.zeros(3)
    with pytest.raises(ValueError, match="values must have shape"):
        conv(torch.randn(2, 4, 8, 8))


def test_bias_replaced_with_wrong_length(conv):
    conv.bias.data = torch.zeros(5)
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\)"):
        conv(torch.randn(2, 4, 8, 8))


def test_empty_batch_raises_clear_error(conv):
    """nn.Conv2d returns an empty (0, O, OH, OW) output for a batch of size 0;
    SparseConv2d refuses it with a ValueError that says why."""
    assert nn.Conv2d(4, 6, 3, stride=2, padding=1)(torch.randn(0, 4, 8, 8)).shape == (0, 6, 4, 4)
    for shape in [(0, 4, 8, 8), (0, 4, 3, 3)]:
        with pytest.raises(ValueError, match="non-empty batch"):
            conv(torch.randn(*shape))


def test_reflect_padding_wider_than_input_raises_like_dense():
    m = SparseConv2d(2, 3, 3, padding=3, padding_mode="reflect", sparsity=0.5)
    x = torch.randn(2, 2, 3, 3)
    with pytest.raises(RuntimeError, match="[Pp]adding size"):
        m.to_dense()(x)
    with pytest.raises((RuntimeError, ValueError), match="[Pp]adding"):
        m(x)


def test_zero_in_channels_is_rejected_or_gives_bias():
    """A layer with no input channels computes bias only (like SparseLinear(0, n));
    it must either be refused at construction or produce that, not crash inside."""
    try:
        m = SparseConv2d(0, 4, 3, sparsity=0.5)
    except ValueError as err:
        assert "in_channels" in str(err)
        return
    x = torch.randn(2, 0, 5, 5)
    y = m(x)
    assert y.shape == (2, 4, 3, 3)
    torch.testing.assert_close(y, m.bias.detach().view(1, 4, 1, 1).expand(2, 4, 3, 3))


# --------------------------------------------------------------------------------------
# bad constructor arguments
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cin,cout,groups", [(4, 6, 3), (6, 4, 3), (5, 5, 2), (4, 6, 4), (3, 3, 6)])
def test_groups_must_divide_channels(cin, cout, groups):
    with pytest.raises(ValueError):
        nn.Conv2d(cin, cout, 3, groups=groups)
    with pytest.raises(ValueError, match=rf"groups={groups} must divide in_channels={cin} and "
                                         rf"out_channels={cout}"):
        SparseConv2d(cin, cout, 3, groups=groups)


@pytest.mark.parametrize("stride", [2, (2, 1), (1, 2)])
def test_same_padding_with_stride(stride):
    with pytest.raises(ValueError):
        nn.Conv2d(2, 3, 3, stride=stride, padding="same")
    with pytest.raises(ValueError, match="padding='same'.*strided"):
        SparseConv2d(2, 3, 3, stride=stride, padding="same")


@pytest.mark.parametrize("mode", ["mirror", "Zeros", "", "constant", None])
def test_bad_padding_mode(mode):
    with pytest.raises(ValueError, match=r"padding_mode must be one of .*" + re.escape(repr(mode))):
        SparseConv2d(2, 3, 3, padding_mode=mode)


@pytest.mark.parametrize("sparsity", [-0.1, 1.5, math.nan, math.inf, -math.inf])
def test_bad_sparsity_value(sparsity):
    with pytest.raises(ValueError, match=r"sparsity must be .*\[0, 1\]"):
        SparseConv2d(2, 3, 3, sparsity=sparsity)
    with pytest.raises(ValueError, match=r"sparsity must be .*\[0, 1\]"):
        SparseConv2d.from_dense(nn.Conv2d(2, 3, 3), sparsity=sparsity)


@pytest.mark.parametrize("sparsity", ["half", None, [0.5]])
def test_bad_sparsity_type(sparsity):
    with pytest.raises(TypeError, match="sparsity must be a number"):
        SparseConv2d(2, 3, 3, sparsity=sparsity)


@pytest.mark.parametrize("name,kwargs", [
    ("kernel_size", dict(kernel_size=0)),
    ("kernel_size", dict(kernel_size=(3, 0))),
    ("kernel_size", dict(kernel_size=(3, 3, 3))),
    ("kernel_size", dict(kernel_size=-1)),
    ("kernel_size", dict(kernel_size=2.5)),
    ("stride", dict(kernel_size=3, stride=0)),
    ("stride", dict(kernel_size=3, stride=(1, -1))),
    ("stride", dict(kernel_size=3, stride=None)),
    ("dilation", dict(kernel_size=3, dilation=0)),
    ("padding", dict(kernel_size=3, padding=-1)),
    ("padding", dict(kernel_size=3, padding=(1, -2))),
    ("padding", dict(kernel_size=3, padding="full")),
    ("padding", dict(kernel_size=3, padding=1.5)),
    ("groups", dict(kernel_size=3, groups=0)),
    ("groups", dict(kernel_size=3, groups=-2)),
    ("in_channels", dict(kernel_size=3, in_channels=-4)),
    ("out_channels", dict(kernel_size=3, out_channels=2.0)),
    ("in_channels", dict(kernel_size=3, in_channels=True)),
], ids=lambda v: v if isinstance(v, str) else str(v).replace(" ", ""))
def test_bad_geometry_arguments(name, kwargs):
    kwargs = dict(dict(in_channels=4, out_channels=6), **kwargs)
    with pytest.raises((ValueError, TypeError), match=name):
        SparseConv2d(**kwargs)


def test_bad_device_and_dtype_arguments():
    with pytest.raises(ValueError, match="CPU only"):
        SparseConv2d(2, 3, 3, device="meta")
    with pytest.raises(TypeError, match="stores its weights as float32, bfloat16, float16, float64"):
        SparseConv2d(2, 3, 3, dtype=torch.int64)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):  # storage dtypes
        assert SparseConv2d(2, 3, 3, device="cpu", dtype=dtype).values.dtype == dtype


def test_from_dense_bad_arguments():
    with pytest.raises(TypeError, match="nn.Conv2d"):
        SparseConv2d.from_dense(nn.Conv1d(2, 3, 3))
    with pytest.raises(TypeError, match="nn.Conv2d"):
        SparseConv2d.from_dense(nn.Linear(2, 3))
    with pytest.raises(ValueError, match=r"mask has shape \(3, 2, 3\) but the weight is \(3, 2, 3, 3\)"):
        SparseConv2d.from_dense(nn.Conv2d(2, 3, 3), mask=torch.ones(3, 2, 3))


def test_set_pattern_bad_arguments(conv):
    x = torch.randn(2, 4, 8, 8)
    before = outputs(conv, x)
    with pytest.raises(ValueError, match=r"pattern shape \(36, 6\) does not match the layer.*\(6, 36\)"):
        conv.set_pattern(CSRPattern.random(36, 6, 0.5))
    p = CSRPattern.random(6, 36, 0.5)
    with pytest.raises(ValueError, match=rf"values must have shape \({p.nnz},\)"):
        conv.set_pattern(p, torch.zeros(p.nnz + 1))
    assert torch.equal(outputs(conv, x), before)


# --------------------------------------------------------------------------------------
# rejected checkpoints leave the module as it was
# --------------------------------------------------------------------------------------
SD_KWARGS = dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, groups=2)  # cols = 18


def _bad_state_dicts():
    src = SparseConv2d(**SD_KWARGS, sparsity=0.5, generator=torch.Generator().manual_seed(1))
    base = {k: v.clone() for k, v in src.state_dict().items()}
    indptr, indices = base["indptr"], base["indices"]
    counts = indptr[1:] - indptr[:-1]
    row = int((counts >= 2).nonzero()[0])
    k = int(indptr[row])
    r = int(((indptr[1:-1] > 0) & (indptr[1:-1] < indptr[2:])).nonzero()[0]) + 1
    cases = {}

    def case(name, match, **changes):
        sd = {key: value.clone() for key, value in base.items()}
        for key, fn in changes.items():
            sd[key] = fn(sd[key])
        cases[name] = (sd, match)

    def set_at(i, v):
        def fn(t):
            t[i] = v
            return t
        return fn

    case("index-out-of-range", r"out of range \[0, 18\)", indices=set_at(0, 18))
    case("index-far-out-of-range", r"out of range \[0, 18\)", indices=set_at(0, 10**6))
    case("index-negative", r"out of range \[0, 18\)", indices=set_at(0, -1))
    case("unsorted-indices", r"unsorted column index",
         indices=lambda t: torch.cat([t[:k], t[k:k + 2].flip(0), t[k + 2:]]))
    case("duplicate-index", r"duplicate column index", indices=set_at(k + 1, int(indices[k])))
    case("indptr-not-monotone", r"indptr must be non-decreasing",
         indptr=lambda t: torch.cat([t[:r], t[r + 1:r + 2], t[r:r + 1], t[r + 2:]]))
    case("indptr-too-short", r"indptr has 6 entries, expected rows \+ 1 = 7", indptr=lambda t: t[:-1])
    case("indptr-does-not-start-at-0", r"indptr\[0\] must be 0", indptr=lambda t: t + 1)
    case("values-too-short", rf"values has shape \({src.nnz - 1},\) but the pattern has {src.nnz}",
         values=lambda t: t[:-1])
    case("values-too-long", rf"values has shape \({src.nnz + 1},\)", values=lambda t: torch.cat([t, t[:1]]))
    case("indices-float", r"indices must be an integer tensor", indices=lambda t: t.float())
    case("indices-one-missing", r"indptr\[-1\]|exceeds the number of nonzeros", indices=lambda t: t[:-1])
    return cases


BAD_STATE_DICTS = _bad_state_dicts()


@pytest.mark.parametrize("case", sorted(BAD_STATE_DICTS))
def test_bad_state_dict_is_rejected_and_module_unchanged(case):
    sd, match = BAD_STATE_DICTS[case]
    dst = SparseConv2d(**SD_KWARGS, sparsity=0.7, generator=torch.Generator().manual_seed(2))
    x = torch.randn(3, 4, 7, 9)
    before_out = outputs(dst, x)  # also caches a plan for x's shape
    before_state = {k: v.clone() for k, v in dst.state_dict().items()}
    values_param = dst.values
    with pytest.raises(ValueError, match=r"while loading 'SparseConv2d'.*" + match):
        dst.load_state_dict(sd)
    assert dst.values is values_param
    after_state = dst.state_dict()
    assert set(after_state) == set(before_state)
    for key in before_state:
        assert torch.equal(after_state[key], before_state[key]), key
    assert torch.equal(outputs(dst, x), before_out)
    compare_conv(dst, x.clone().requires_grad_())  # plans and pattern intact


def test_bad_state_dict_in_submodule_names_the_prefix():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), SparseConv2d(4, 6, 3, sparsity=0.5))
    sd = net.state_dict()
    sd["1.indices"] = sd["1.indices"].clone()
    sd["1.indices"][0] = 99
    with pytest.raises(ValueError, match=r"while loading '1'.*indices\[0\] = 99"):
        net.load_state_dict(sd)


# --------------------------------------------------------------------------------------
# hand-edited pattern buffers
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("edit,match", [
    (lambda m: m.indices.__setitem__(0, 36), r"indices\[0\] = 36 \(row 0\) is out of range \[0, 36\)"),
    (lambda m: m.indices.__setitem__(0, -1), r"out of range"),
    (lambda m: m.indices.fill_(3), r"duplicate column index 3"),
    (lambda m: m.indptr.__setitem__(1, 10**6), r"indptr\[1\] = 1000000 exceeds the number of nonzeros"),
], ids=["index-too-big", "index-negative", "duplicates", "indptr-too-big"])
def test_inplace_edit_to_invalid_pattern_raises(conv, edit, match):
    x = torch.randn(2, 4, 8, 8)
    ref = outputs(conv, x)  # a plan is cached for this shape
    saved = (conv.indptr.clone(), conv.indices.clone())
    with torch.no_grad():
        edit(conv)
    with pytest.raises(ValueError, match=match):
        conv(x)
    with pytest.raises(ValueError, match=match):
        conv.weight
    conv.indptr.copy_(saved[0])
    conv.indices.copy_(saved[1])
    assert torch.equal(outputs(conv, x), ref)


UNTRACKED_WRITES = {
    "data-huge-index": "m.indices.data[0] = 10**9",
    "numpy-huge-index": "m.indices.numpy()[0] = 10**6",
    "numpy-negative-index": "m.indices.numpy()[0] = -5",
    "numpy-indptr": "m.indptr.numpy()[1] = 10**6",
}


@pytest.fixture(scope="module")
def untracked_edit_results():
    """Run every untracked edit in one fresh interpreter (a crash shows up as a
    missing line plus the return code); {name: printed outcome}."""
    code = textwrap.dedent("""
        import sys, torch, sparseprop
        for name, write in WRITES.items():
            m = sparseprop.SparseConv2d(3, 4, 3, sparsity=0.5)
            m(torch.randn(2, 3, 8, 8))  # the pattern has been validated and cached
            exec(write)
            try:
                m(torch.randn(2, 3, 9, 9))  # a new shape: a new plan from the edited buffers
            except ValueError as e:
                print(name, "ValueError:", e, flush=True)
            except Exception as e:
                print(name, "other exception:", type(e).__name__, e, flush=True)
            else:
                print(name, "no error", flush=True)
    """).replace("WRITES", repr(UNTRACKED_WRITES))
    proc = run_python(code)
    results = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.strip())
    return proc, results


@pytest.mark.parametrize("name", sorted(UNTRACKED_WRITES))
def test_untracked_inplace_edit_does_not_crash(untracked_edit_results, name):
    """Writes through .data or numpy bypass the version counter the layer watches.
    A new input shape then builds a plan from the corrupted pattern: that must end
    in a ValueError, never a segfault or an internal error (run in a subprocess)."""
    proc, results = untracked_edit_results
    assert name in results, (f"interpreter died (return code {proc.returncode}, segfault = -11) "
                             f"before reporting {name}\n{proc.stderr[-2000:]}")
    assert results[name].startswith("ValueError"), f"{UNTRACKED_WRITES[name]}: {results[name]}"
