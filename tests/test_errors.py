"""Every bad input raises a clear exception that names the problem, and a rejected
checkpoint leaves the module exactly as it was."""
from __future__ import annotations

import math
import re
import textwrap

import pytest
import torch
from torch import nn

import sparseprop
from sparseprop import CSRPattern, SparseLinear
from sparseprop.functional import sparse_linear

from conftest import UNAVAILABLE_ISAS, compare_with_dense, run_python


@pytest.fixture
def layer():
    return SparseLinear(17, 9, sparsity=0.5)


# --------------------------------------------------------------------------------------
# forward inputs
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 16), (4, 18), (17, 4), (2, 3, 5), (0,), (16,)])
def test_wrong_feature_size(layer, shape):
    with pytest.raises(ValueError, match=r"\(\*, 17\).*" + str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")):
        layer(torch.randn(*shape))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_wrong_input_dtype(layer, dtype):
    x = torch.zeros(4, 17, dtype=dtype)
    with pytest.raises(TypeError, match=r"float32.*" + str(dtype).replace(".", r"\.")):
        layer(x)


def test_non_tensor_input(layer):
    with pytest.raises(TypeError, match="torch.Tensor"):
        layer([[0.0] * 17])


def test_meta_device_input(layer):
    with pytest.raises(ValueError, match="CPU.*meta|meta.*CPU"):
        layer(torch.empty(4, 17, device="meta"))


def test_scalar_input(layer):
    with pytest.raises(ValueError, match=r"shape \(\*, 17\)"):
        layer(torch.tensor(1.0))


def test_module_cast_to_double_fails_clearly(layer):
    layer.double()  # float64 is a path of its own: a float32 input does not mix with it
    with pytest.raises(TypeError, match="must all be float64"):
        layer(torch.randn(2, 17))


def test_values_replaced_with_wrong_length(layer):
    layer.values.data = torch.zeros(3)
    with pytest.raises(ValueError, match="values must have shape"):
        layer(torch.randn(2, 17))


# --------------------------------------------------------------------------------------
# construction
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [-0.1, 1.5, math.nan, math.inf, -math.inf])
def test_bad_sparsity_value(sparsity):
    pattern = r"sparsity must be .*\[0, 1\]"
    with pytest.raises(ValueError, match=pattern):
        SparseLinear(4, 3, sparsity=sparsity)
    with pytest.raises(ValueError, match=pattern):
        CSRPattern.random(3, 4, sparsity)
    with pytest.raises(ValueError, match=pattern):
        SparseLinear.from_dense(nn.Linear(4, 3), sparsity=sparsity)


@pytest.mark.parametrize("sparsity", ["half", None, [0.5]])
def test_bad_sparsity_type(sparsity):
    with pytest.raises(TypeError, match="sparsity must be a number"):
        SparseLinear(4, 3, sparsity=sparsity)


@pytest.mark.parametrize("in_f,out_f,name", [(-1, 3, "in_features"), (3, -2, "out_features"),
                                             (2.5, 3, "in_features"), (True, 3, "in_features"),
                                             (3, "4", "out_features")])
def test_bad_feature_counts(in_f, out_f, name):
    bad = in_f if name == "in_features" else out_f
    # the message names the argument, says it must be a (non-negative) int, shows the value
    with pytest.raises(ValueError, match=rf"{name} must be .*int.*{re.escape(repr(bad))}"):
        SparseLinear(in_f, out_f)


def test_bad_device_and_dtype_arguments():
    with pytest.raises(ValueError, match="CPU only"):
        SparseLinear(4, 3, device="meta")
    with pytest.raises(TypeError, match="stores its weights as float32, bfloat16, float16, float64"):
        SparseLinear(4, 3, dtype=torch.int32)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):  # storage dtypes
        assert SparseLinear(4, 3, device="cpu", dtype=dtype).values.dtype == dtype


def test_from_dense_bad_arguments():
    with pytest.raises(TypeError, match="nn.Linear"):
        SparseLinear.from_dense(nn.Conv1d(3, 4, 1))
    with pytest.raises(ValueError, match=r"mask has shape \(4, 3\) but the weight is \(3, 4\)"):
        SparseLinear.from_dense(nn.Linear(4, 3), mask=torch.ones(4, 3))


def test_set_pattern_bad_arguments(layer):
    before = layer(torch.ones(1, 17)).detach()
    with pytest.raises(ValueError, match=r"pattern shape \(17, 9\) does not match the layer.*\(9, 17\)"):
        layer.set_pattern(CSRPattern.random(17, 9, 0.5))
    p = CSRPattern.random(9, 17, 0.5)
    with pytest.raises(ValueError, match=rf"values must have shape \({p.nnz},\)"):
        layer.set_pattern(p, torch.zeros(p.nnz + 1))
    assert torch.equal(layer(torch.ones(1, 17)).detach(), before)


# --------------------------------------------------------------------------------------
# functional
# --------------------------------------------------------------------------------------
def test_functional_bad_arguments():
    p = CSRPattern.random(9, 17, 0.5)
    x = torch.randn(3, 17)
    v = torch.randn(p.nnz)
    with pytest.raises(ValueError, match=rf"values must have shape \({p.nnz},\).*\({p.nnz - 1},\)"):
        sparse_linear(x, p, v[:-1])
    with pytest.raises(ValueError, match=rf"values must have shape \({p.nnz},\)"):
        sparse_linear(x, p, v.view(1, -1))
    with pytest.raises(TypeError, match="must all be float64"):
        sparse_linear(x, p, v.double())
    with pytest.raises(TypeError, match="values must be float32.*int64"):
        sparse_linear(x, p, v.long())
    with pytest.raises(ValueError, match=r"bias must have shape \(9,\)"):
        sparse_linear(x, p, v, torch.zeros(8))
    with pytest.raises(TypeError, match="must all be float64"):
        sparse_linear(x, p, v, torch.zeros(9, dtype=torch.float64))
    with pytest.raises(TypeError, match="CSRPattern"):
        sparse_linear(x, (p.indptr, p.indices), v)
    with pytest.raises(ValueError, match=r"input must have shape \(\*, 17\)"):
        sparse_linear(torch.randn(3, 16), p, v)
    with pytest.raises(TypeError, match="input must be float32.*int32"):
        sparse_linear(x.int(), p, v)


# --------------------------------------------------------------------------------------
# CSRPattern validation
# --------------------------------------------------------------------------------------
I64, I32 = torch.int64, torch.int32


@pytest.mark.parametrize("indptr,indices,shape,exc,match", [
    ([0, 1, 2], [0, 5], (2, 3), ValueError, r"indices\[1\] = 5 \(row 1\) is out of range \[0, 3\)"),
    ([0, 1, 2], [0, -1], (2, 3), ValueError, r"indices\[1\] = -1 .*out of range"),
    ([0, 2, 2], [2, 1], (2, 3), ValueError, r"unsorted column index 1 at indices\[1\] in row 0"),
    ([0, 2, 2], [1, 1], (2, 3), ValueError, r"duplicate column index 1 at indices\[1\] in row 0"),
    ([0, 2, 1, 3], [0, 1, 2], (3, 3), ValueError, r"indptr must be non-decreasing"),
    ([1, 1, 2], [0, 1], (2, 3), ValueError, r"indptr\[0\] must be 0"),
    ([0, 1, 1], [0, 1], (2, 3), ValueError, r"indptr\[-1\] = 1 but there are 2 indices"),
    ([0, 1, 5], [0, 1], (2, 3), ValueError, r"indptr\[2\] = 5 exceeds the number of nonzeros"),
    ([0, 1], [0, 1], (2, 3), ValueError, r"indptr has 2 entries, expected rows \+ 1 = 3"),
    (torch.zeros(0, dtype=I64), torch.zeros(0, dtype=I32), (0, 3), ValueError,
     r"indptr has 0 entries, expected rows \+ 1 = 1"),
    ([0, 1, 2], [0, 1], (-2, 3), ValueError, r"non-negative"),
    ([0, 1, 2], [0, 1], (2, -3), ValueError, r"non-negative"),
    (torch.tensor([0.0, 1.0, 2.0]), [0, 1], (2, 3), TypeError, r"indptr must be an integer tensor"),
    ([0, 1, 2], torch.tensor([0.0, 1.0]), (2, 3), TypeError, r"indices must be an integer tensor"),
    ([0, 1, 2], torch.tensor([True, False]), (2, 3), TypeError, r"indices must be an integer tensor"),
    (torch.tensor([[0, 1, 2]]), [0, 1], (2, 3), ValueError, r"indptr must be 1-D"),
    ([0, 1, 2], torch.tensor([[0], [1]]), (2, 3), ValueError, r"indices must be 1-D"),
    ([0, 1, 2], torch.tensor([0, 2**32 + 1], dtype=I64), (2, 3), ValueError, r"int32 range"),
    ([0, 1, 2], [0, 1], (2, 2**31), ValueError, r"at most 2147483647 columns"),
], ids=["index-too-big", "index-negative", "unsorted", "duplicate", "indptr-decreasing",
        "indptr0-nonzero", "indptr-last-short", "indptr-too-big", "indptr-length", "indptr-empty",
        "rows-negative", "cols-negative", "float-indptr", "float-indices", "bool-indices", "2d-indptr",
        "2d-indices", "wrapping-int64-index", "too-many-columns"])
def test_pattern_validation(indptr, indices, shape, exc, match):
    with pytest.raises(exc, match=match):
        CSRPattern(indptr, indices, shape)


def test_pattern_on_meta_device():
    with pytest.raises(ValueError, match="indptr must be on the CPU"):
        CSRPattern(torch.zeros(3, dtype=I64, device="meta"), torch.zeros(0, dtype=I32), (2, 3))


def test_pattern_helpers_bad_shapes():
    with pytest.raises(ValueError, match="mask must be 2-D"):
        CSRPattern.from_mask(torch.ones(3))
    p = CSRPattern.random(3, 4, 0.5)
    with pytest.raises(ValueError, match=r"expected a tensor of shape \(3, 4\), got \(4, 3\)"):
        p.gather(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=rf"values must have shape \({p.nnz},\)"):
        p.to_dense(torch.zeros(p.nnz + 2))


# --------------------------------------------------------------------------------------
# rejected checkpoints leave the module as it was
# --------------------------------------------------------------------------------------
def _bad_state_dicts():
    src = SparseLinear(10, 6, sparsity=0.5, generator=torch.Generator().manual_seed(1))
    base = {k: v.clone() for k, v in src.state_dict().items()}
    indptr, indices = base["indptr"], base["indices"]
    counts = indptr[1:] - indptr[:-1]
    row = int((counts >= 2).nonzero()[0])  # a row with at least two nonzeros
    k = int(indptr[row])
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

    case("index-out-of-range", r"out of range \[0, 10\)", indices=set_at(0, 10))
    case("index-negative", r"out of range \[0, 10\)", indices=set_at(0, -3))
    case("unsorted-indices", r"unsorted column index",
         indices=lambda t: torch.cat([t[:k], t[k:k + 2].flip(0), t[k + 2:]]))
    case("duplicate-index", r"duplicate column index", indices=set_at(k + 1, int(indices[k])))
    r = int(((indptr[1:-1] > 0) & (indptr[1:-1] < indptr[2:])).nonzero()[0]) + 1  # indptr[r] > 0
    case("indptr-not-monotone", r"indptr must be non-decreasing",
         indptr=lambda t: torch.cat([t[:r], t[r + 1:r + 2], t[r:r + 1], t[r + 2:]]))
    case("indptr-too-short", r"indptr has 6 entries, expected rows \+ 1 = 7", indptr=lambda t: t[:-1])
    case("indptr-too-long", r"indptr has 8 entries", indptr=lambda t: torch.cat([t, t[-1:]]))
    case("indptr-does-not-start-at-0", r"indptr\[0\] must be 0", indptr=lambda t: t + 1)
    case("values-too-short", rf"values has shape \({src.nnz - 1},\) but the pattern has {src.nnz}",
         values=lambda t: t[:-1])
    case("values-too-long", rf"values has shape \({src.nnz + 1},\)", values=lambda t: torch.cat([t, t[:1]]))
    case("indices-float", r"indices must be an integer tensor", indices=lambda t: t.float())
    case("indices-2d", r"indices must be 1-D", indices=lambda t: t.view(1, -1))
    case("indices-one-missing", r"indptr\[-1\]|exceeds the number of nonzeros", indices=lambda t: t[:-1])
    return cases


BAD_STATE_DICTS = _bad_state_dicts()


@pytest.mark.parametrize("case", sorted(BAD_STATE_DICTS))
def test_bad_state_dict_is_rejected_and_module_unchanged(case):
    sd, match = BAD_STATE_DICTS[case]
    dst = SparseLinear(10, 6, sparsity=0.7, generator=torch.Generator().manual_seed(2))
    x = torch.randn(5, 10)
    before_out = dst(x).detach().clone()
    before_state = {k: v.clone() for k, v in dst.state_dict().items()}
    values_param = dst.values
    with pytest.raises(ValueError, match=r"while loading 'SparseLinear'.*" + match):
        dst.load_state_dict(sd)
    assert dst.values is values_param
    after_state = dst.state_dict()
    assert set(after_state) == set(before_state)
    for key in before_state:
        assert torch.equal(after_state[key], before_state[key]), key
    assert torch.equal(dst(x).detach(), before_out)
    compare_with_dense(dst, torch.randn(4, 10, requires_grad=True))  # transposed pattern intact


def test_bad_state_dict_in_submodule_names_the_prefix():
    net = nn.Sequential(nn.Linear(4, 10), SparseLinear(10, 6, sparsity=0.5))
    sd = net.state_dict()
    sd["1.indices"] = sd["1.indices"].clone()
    sd["1.indices"][0] = 99
    with pytest.raises(ValueError, match=r"while loading '1'.*indices\[0\] = 99"):
        net.load_state_dict(sd)


# --------------------------------------------------------------------------------------
# hand-edited pattern buffers
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("edit,match", [
    (lambda m: m.indices.__setitem__(0, 17), r"indices\[0\] = 17 \(row 0\) is out of range \[0, 17\)"),
    (lambda m: m.indices.__setitem__(0, -1), r"out of range"),
    (lambda m: m.indices.fill_(3), r"duplicate column index 3"),
    (lambda m: m.indptr.__setitem__(1, 10**6), r"indptr\[1\] = 1000000 exceeds the number of nonzeros"),
    (lambda m: m.indptr.__setitem__(0, 1), r"indptr\[0\] must be 0"),
], ids=["index-too-big", "index-negative", "duplicates", "indptr-too-big", "indptr0"])
@pytest.mark.parametrize("under_no_grad", [False, True])
def test_inplace_edit_to_invalid_pattern_raises(layer, edit, match, under_no_grad):
    x = torch.randn(3, 17)
    ref = layer(x).detach().clone()
    saved = (layer.indptr.clone(), layer.indices.clone())
    if under_no_grad:
        with torch.no_grad():
            edit(layer)
    else:
        edit(layer)
    with pytest.raises(ValueError, match=match):
        layer(x)
    with pytest.raises(ValueError, match=match):
        layer.weight
    # repairing the buffers makes the layer usable again
    layer.indptr.copy_(saved[0])
    layer.indices.copy_(saved[1])
    assert torch.equal(layer(x).detach(), ref)


def test_replaced_buffer_with_invalid_pattern_raises(layer):
    layer.indices = torch.full_like(layer.indices, 40)
    with pytest.raises(ValueError, match="out of range"):
        layer(torch.randn(3, 17))


def test_nan_values_load_like_nn_linear():
    """A diverged checkpoint is still the user's data: NaN values load (as in
    nn.Linear) and propagate, rather than being refused."""
    src = SparseLinear(10, 6, sparsity=0.5)
    sd = src.state_dict()
    sd["values"] = sd["values"].clone()
    sd["values"][0] = float("nan")
    dst = SparseLinear(10, 6, sparsity=0.5)
    dst.load_state_dict(sd)
    assert torch.isnan(dst.values[0])
    assert torch.isnan(dst(torch.ones(1, 10))).any()


@pytest.mark.parametrize("how", ["data", "numpy"])
def test_untracked_inplace_edit_does_not_crash(how):
    """Writes through .data or a numpy view bypass the version counter the layer uses
    to notice edits. Forward must still never read out of bounds: an out-of-range
    index has to end in a ValueError, not a segfault (run in a subprocess)."""
    write = {"data": "m.indices.data[0] = 10**9", "numpy": "m.indices.numpy()[0] = 10**9"}[how]
    code = textwrap.dedent(f"""
        import torch, sparseprop
        m = sparseprop.SparseLinear(8, 6, sparsity=0.5)
        m(torch.randn(2, 8))  # the pattern has been validated and cached
        {write}
        try:
            m(torch.randn(2, 8))
        except ValueError as e:
            print("ValueError:", e)
        else:
            print("no error")
    """)
    proc = run_python(code)
    assert proc.returncode == 0, f"interpreter died with return code {proc.returncode} (segfault = -11)\n{proc.stderr[-2000:]}"
    assert "ValueError" in proc.stdout and "out of range" in proc.stdout, proc.stdout


# --------------------------------------------------------------------------------------
# ISA and threads
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bogus", "", "sse2", "AVX-512"])
def test_set_isa_unknown_name(name):
    before = sparseprop.get_isa()
    with pytest.raises(ValueError, match="unknown ISA"):
        sparseprop.set_isa(name)
    assert sparseprop.get_isa() == before
    with pytest.raises(ValueError, match="unknown ISA"):
        with sparseprop.use_isa(name):
            pass  # pragma: no cover
    assert sparseprop.get_isa() == before


@pytest.mark.skipif(not UNAVAILABLE_ISAS, reason="every known ISA is available here")
@pytest.mark.parametrize("name", UNAVAILABLE_ISAS or ["none"])
def test_set_isa_unavailable(name):
    before = sparseprop.get_isa()
    with pytest.raises(RuntimeError, match=f"ISA '{name}' is not supported by this CPU or build"):
        sparseprop.set_isa(name)
    assert sparseprop.get_isa() == before


