"""Cheap pattern updates: O(n) top-k selection, and magnitude pruning of a layer that is
already sparse done inside the sparse form; both give the masks the plain ranking gives."""
import pytest
import torch
from torch import nn

from sparseprop import SparseLinear, pruning
from sparseprop.pruning.allocation import topk_mask
from sparseprop.topk_select import kth_largest, top_k_mask


def _reference(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k by a stable sort: ties kept in position order."""
    order = torch.sort(-scores.flatten(), stable=True).indices
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    keep[order[:k]] = True
    return keep.view(scores.shape)


@pytest.mark.parametrize("n", [10, 300_000])
@pytest.mark.parametrize("fraction", [0.01, 0.37, 0.9])
def test_top_k_mask_matches_a_stable_sort(n, fraction):
    g = torch.Generator().manual_seed(n)
    scores = torch.randn(n, generator=g).abs()
    k = max(1, int(fraction * n))
    assert torch.equal(top_k_mask(scores, k), _reference(scores, k))


def test_ties_and_bracket_misses_fall_back_exactly():
    scores = torch.cat([torch.zeros(200_000), torch.ones(100_000)])  # every score tied
    for k in (1, 150_000, 250_000):
        assert torch.equal(top_k_mask(scores, k), _reference(scores, k))
    assert float(kth_largest(torch.arange(400_000.0), 3)) == 399_997.0
    assert int(top_k_mask(scores, 0).sum()) == 0 and bool(top_k_mask(scores, 10**9).all())


def test_topk_mask_keeps_only_allowed():
    scores = torch.tensor([[5.0, 4.0, 3.0], [2.0, 1.0, 0.0]])
    allowed = torch.tensor([[False, True, True], [True, False, True]])
    assert topk_mask(scores, 2, allowed).tolist() == [[False, True, True], [False, False, False]]
    assert torch.equal(topk_mask(scores, 9, allowed), allowed)


@pytest.mark.parametrize("outside", ["zero", "large"])
def test_topk_mask_among_allowed_matches_masking_the_scores(outside):
    g = torch.Generator().manual_seed(1)
    allowed = torch.rand(300_000, generator=g) < 0.4
    scores = torch.randn(300_000, generator=g).abs()
    scores[allowed & (torch.rand(300_000, generator=g) < 0.05)] = 0.0  # allowed zeros: ties
    scores[~allowed] = 0.0 if outside == "zero" else 10.0
    expected_scores = scores.masked_fill(~allowed, -float("inf"))
    n_allowed = int(allowed.sum())
    for k in (1, n_allowed // 2, n_allowed - 10):  # the last one needs allowed zeros
        got = topk_mask(scores.clone(), k, allowed)
        assert int(got.sum()) == k and not bool((got & ~allowed).any())
        assert torch.equal(got, _reference(expected_scores, k))


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 30))


def test_sparse_layer_pruned_in_place_matches_the_dense_path():
    dense_model, sparse_model = _model(), _model()
    masked = pruning.MagnitudePruner(dense_model, sparsity=0.5, sparse_from=None)
    sparse = pruning.MagnitudePruner(sparse_model, sparsity=0.5, sparse_from=0.3)
    assert all(isinstance(m, SparseLinear) for m in (sparse_model[0], sparse_model[2]))
    values = sparse_model[0].values
    masked.prune_to(0.8)
    sparse.prune_to(0.8)
    assert sparse_model[0].values is values  # the same Parameter: not densified
    for name, mask in masked.masks().items():
        assert torch.equal(sparse.masks()[name], mask)
        assert torch.equal(sparse.weights()[name], masked.weights()[name])


def test_sparse_form_pruning_carries_optimizer_state():
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    pruner = pruning.MagnitudePruner(model, opt, sparsity=0.5, sparse_from=0.3)
    model(torch.randn(8, 40)).sum().backward()
    opt.step()
    layer = model[0]
    before = dict(zip(map(tuple, torch.nonzero(layer.pattern.mask().view(64, 40)).tolist()),
                      opt.state[layer.values]["exp_avg"].tolist()))
    pruner.prune_to(0.9)
    after = torch.nonzero(layer.pattern.mask().view(64, 40)).tolist()
    assert opt.state[layer.values]["exp_avg"].tolist() == [before[tuple(p)] for p in after]
