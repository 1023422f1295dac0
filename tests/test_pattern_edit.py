"""The native pattern edits behind the pruners (csrc/pattern_edit.cc): top-k select, mask to
CSR and the gather at a pattern's positions, against plain torch on awkward inputs."""
import numpy as np
import pytest
import torch

from sparseprop import _C, set_num_threads
from sparseprop.csr import CSRPattern, topk_mask
from sparseprop.pruning._fast_pattern import gather_pattern, pattern_of_mask
from sparseprop.topk_select import top_k_mask


def _stable_top_k(scores: torch.Tensor, k: int, allowed=None) -> torch.Tensor:
    """Top-k by a stable sort (ties kept in position order), among ``allowed``."""
    flat = scores.flatten().double()
    where = (torch.arange(flat.numel()) if allowed is None
             else torch.nonzero(allowed.flatten()).flatten())
    order = torch.sort(-flat[where], stable=True).indices
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[where[order[:k]]] = True
    return keep.view(scores.shape)


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    set_num_threads(request.param)
    yield request.param
    set_num_threads(None)


def _awkward_scores(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, generator=g)
    s[torch.rand(n, generator=g) < 0.3] = 0.0
    s[torch.rand(n, generator=g) < 0.05] = -0.0  # equal to +0: one tie group
    s[torch.rand(n, generator=g) < 0.01] = float("inf")
    s[torch.rand(n, generator=g) < 0.01] = -float("inf")
    s[torch.rand(n, generator=g) < 0.2] = 1.5  # a large tie group
    return s


@pytest.mark.parametrize("n", [1, 7, 1000, 200_003])
def test_top_k_matches_a_stable_sort(n, threads):
    scores = _awkward_scores(n, n)
    for k in sorted({1, n // 3, n // 2, max(1, n - 1)}):
        assert torch.equal(top_k_mask(scores, k), _stable_top_k(scores, k)), k


@pytest.mark.parametrize("n", [9, 200_003])
def test_top_k_among_allowed_never_picks_outside(n, threads):
    scores = _awkward_scores(n, n + 1)
    allowed = torch.rand(n, generator=torch.Generator().manual_seed(3)) < 0.6
    allowed[0] = True
    n_allowed = int(allowed.sum())
    for k in sorted({1, n_allowed // 2, n_allowed}):
        got = top_k_mask(scores, k, allowed)
        assert int(got.sum()) == k and not bool((got & ~allowed).any())
        assert torch.equal(got, _stable_top_k(scores, k, allowed)), k
    assert torch.equal(topk_mask(scores.view(1, -1), n_allowed + 5, allowed.view(1, -1)),
                       allowed.view(1, -1))


def test_nan_scores_take_the_torch_path():
    scores = torch.arange(300_000.0)
    scores[5] = float("nan")
    assert _C.top_k_threshold(scores.numpy(), None, 10, 2) is None
    got = top_k_mask(scores, 10)
    assert int(got.sum()) == 10 and bool(got[-9:].all())


def test_select_rejects_bad_arguments():
    scores = np.zeros(10, dtype=np.float32)
    with pytest.raises(TypeError, match="float32"):
        _C.top_k_threshold(scores.astype(np.float64), None, 1, 1)
    with pytest.raises(ValueError, match="allowed has 3 entries"):
        _C.top_k_threshold(scores, np.ones(3, dtype=np.uint8), 1, 1)
    with pytest.raises(ValueError, match="k must be at least 1"):
        _C.top_k_threshold(scores, None, 0, 1)
    with pytest.raises(ValueError, match="k = 11 exceeds the number of scores considered"):
        _C.top_k_threshold(scores, None, 11, 1)
    allowed = torch.zeros(10, dtype=torch.bool)
    allowed[:3] = True
    with pytest.raises(ValueError, match="k = 4 exceeds"):
        top_k_mask(torch.from_numpy(scores), 4, allowed)  # never a mask outside allowed


@pytest.mark.parametrize("cols", [1, 7, 8, 9, 63, 65, 200])
def test_mask_to_csr_matches_from_mask(cols, threads):
    g = torch.Generator().manual_seed(cols)
    rows = 300
    mask = torch.rand(rows, cols, generator=g) < 0.3
    mask[5] = False  # an empty row
    mask[6] = True  # a dense row
    got = pattern_of_mask(mask, (rows, cols))
    want = CSRPattern.from_mask(mask)
    assert torch.equal(got.indptr, want.indptr) and torch.equal(got.indices, want.indices)
    assert pattern_of_mask(torch.zeros(0, cols, dtype=torch.bool), (0, cols)).nnz == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_gather_at_a_pattern_is_the_masked_select(dtype, threads):
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(257, 131, generator=g).to(dtype)
    mask = torch.rand(257, 131, generator=g) < 0.2
    pattern = pattern_of_mask(mask, (257, 131))
    got = gather_pattern(pattern)(dense)
    assert got.dtype == dtype and torch.equal(got, dense[mask])
    # a conv weight viewed as (out, in * kh * kw)
    conv = torch.randn(16, 3, 3, 3, generator=g).to(dtype)
    cmask = torch.rand(16, 27, generator=g) < 0.5
    assert torch.equal(gather_pattern(pattern_of_mask(cmask, (16, 27)))(conv),
                       conv.reshape(16, 27)[cmask])


def test_gather_checks_the_pattern_against_the_tensor():
    dense = np.zeros((4, 5), dtype=np.float32)
    out = np.zeros(1, dtype=np.float32)
    with pytest.raises(ValueError, match="out of range"):
        _C.gather_pattern(dense, np.array([0, 1, 1, 1, 1]), np.array([7], dtype=np.int32), 1, out)
    with pytest.raises(ValueError, match="rows of dense"):
        _C.gather_pattern(dense, np.array([0, 0]), np.zeros(0, dtype=np.int32), 1, out[:0])
    with pytest.raises(ValueError, match="out must be"):
        _C.gather_pattern(dense, np.array([0, 1, 1, 1, 1]), np.array([3], dtype=np.int32), 1,
                          np.zeros(1, dtype=np.float64))
    with pytest.raises(ValueError, match="2, 4 or 8 bytes"):
        _C.gather_pattern(dense.astype(np.uint8), np.zeros(5, dtype=np.int64),
                          np.zeros(0, dtype=np.int32), 1, out[:0].view(np.uint8))


def test_column_indices_refuse_a_row_pointer_of_another_mask():
    mask = np.array([[1, 0, 1], [0, 1, 0]], dtype=np.uint8)
    indptr = np.zeros(3, dtype=np.int64)
    _C.mask_row_pointer(mask, 1, indptr)
    assert indptr.tolist() == [0, 2, 3]
    indices = np.zeros(3, dtype=np.int32)
    _C.mask_column_indices(mask, indptr, 1, indices)
    assert indices.tolist() == [0, 2, 1]
    with pytest.raises(ValueError, match="not this mask's row pointer"):
        _C.mask_column_indices(mask, np.array([0, 1, 3]), 1, indices)  # no write past a row
    with pytest.raises(ValueError, match="does not match indices"):
        _C.mask_column_indices(mask, np.array([0, 2, 4]), 1, indices)


@pytest.mark.parametrize("shape", [(300, 1), (257, 1100), (64, 4096)])
def test_parallel_transpose_equals_the_serial_one(shape):
    g = torch.Generator().manual_seed(shape[1])
    mask = torch.rand(shape, generator=g) < 0.4
    mask[3] = False
    ip, ix = pattern_of_mask(mask, shape)._np
    serial = _C.transpose_csr(ip, ix, shape[1], 1)
    parallel = _C.transpose_csr(ip, ix, shape[1], 2)
    for a, b in zip(serial, parallel):
        assert np.array_equal(a, b)
    want = pattern_of_mask(mask.t(), shape[::-1])._np
    assert np.array_equal(serial[0], want[0]) and np.array_equal(serial[1], want[1])


def test_transpose_of_unsorted_rows_falls_back_to_the_plain_scatter():
    indptr = np.array([0, 3, 4], dtype=np.int64)
    indices = np.array([2, 0, 1, 1], dtype=np.int32)
    t_indptr, t_indices, perm = _C.transpose_csr(indptr, indices, 3, 2)
    assert t_indptr.tolist() == [0, 1, 3, 4]
    assert t_indices.tolist() == [0, 0, 1, 0] and perm.tolist() == [1, 2, 3, 0]


def test_set_pattern_takes_the_values_only_when_told():
    from sparseprop import SparseLinear
    layer = SparseLinear.from_dense(torch.nn.Linear(8, 4), sparsity=0.5)
    pattern = pattern_of_mask(torch.ones(4, 8, dtype=torch.bool), (4, 8))
    values = torch.randn(32)
    layer.set_pattern(pattern, values)
    assert layer.values.data_ptr() != values.data_ptr() and torch.equal(layer.values, values)
    layer.set_pattern(pattern, values, copy=False)
    assert layer.values.data_ptr() == values.data_ptr()
    layer.set_pattern(pattern, values.double(), copy=False)  # another dtype: converted
    assert layer.values.dtype == torch.float32 and torch.equal(layer.values, values)
