"""Layer allocations (sparseprop.pruning.allocation): ER / ERK densities, uniform and
global top-k, min_keep and allowed sets, against values computed by hand."""
from __future__ import annotations

import math

import pytest
import torch

from sparseprop.pruning import (er_densities, global_masks, uniform_counts)
from sparseprop.pruning.allocation import allocate

from pruning_helpers import nnz

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (conftest)


# --------------------------------------------------------------------------------------
# ER / ERK densities
# --------------------------------------------------------------------------------------
KERNELS = {"a": (4, 2, 1, 1), "b": (20, 10, 1, 1), "c": (8, 4, 3, 3)}  # 8 + 200 + 288 = 496


def test_erk_densities_with_saturated_layer():
    # raw ERK: a (2+4+2)/8 = 1, b (10+20+2)/200 = 0.16, c (4+8+6)/288 = 1/16.
    # budget 248: eps = 248 / (8 + 32 + 18) -> a > 1, dense; eps = 240 / 50 = 4.8.
    d = er_densities(KERNELS, 0.5, "erk")
    assert d["a"] == 1.0
    assert d["b"] == pytest.approx(0.16 * 4.8)  # 0.768
    assert d["c"] == pytest.approx(4.8 / 16)    # 0.3
    kept = 8 * d["a"] + 200 * d["b"] + 288 * d["c"]
    assert kept == pytest.approx(0.5 * 496)


def test_er_densities_with_saturated_layer():
    # raw ER: a 6/8, b 30/200, c 12/32 (the kernel size does not count).
    # eps = 248 / (6 + 30 + 108) -> a saturates; eps = 240 / 138.
    d = er_densities(KERNELS, 0.5, "er")
    assert d["a"] == 1.0
    assert d["b"] == pytest.approx(6 / 23)
    assert d["c"] == pytest.approx(15 / 23)
    assert 8 + 200 * d["b"] + 288 * d["c"] == pytest.approx(248)
    # ER gives the conv layer much more than ERK does
    assert d["c"] > 2 * er_densities(KERNELS, 0.5, "erk")["c"]


def test_erk_densities_without_saturation():
    d = er_densities(KERNELS, 0.9, "erk")
    eps = 49.6 / 58
    assert d == pytest.approx({"a": eps, "b": 0.16 * eps, "c": eps / 16})
    assert 8 * d["a"] + 200 * d["b"] + 288 * d["c"] == pytest.approx(49.6)


def test_erk_densities_resolve_twice():
    # a: raw 6/4, b: raw 10/16, c: raw 66/1024; budget 0.125 * 1044 = 130.5.
    # eps1 = 130.5 / 82 -> a saturates (b at 0.9947 does not);
    # eps2 = 126.5 / 76 -> b at 1.04 now saturates; eps3 = 110.5 / 66.
    kernels = {"a": (2, 2, 1, 1), "b": (4, 4, 1, 1), "c": (32, 32, 1, 1)}
    d = er_densities(kernels, 0.875, "erk")
    assert d["a"] == 1.0 and d["b"] == 1.0
    assert d["c"] == pytest.approx(110.5 / 1024)
    assert 4 + 16 + 1024 * d["c"] == pytest.approx(130.5)


def test_er_erk_identical_for_linear_layers_only():
    kernels = {"x": (8, 16, 1, 1), "y": (32, 8, 1, 1)}
    # ERK raw adds 2 / numel: the two rules differ even for linear layers, but only a bit
    er, erk = er_densities(kernels, 0.8, "er"), er_densities(kernels, 0.8, "erk")
    raw_er = {"x": 24 / 128, "y": 40 / 256}
    eps = 0.2 * 384 / (24 + 40)
    assert er == pytest.approx({n: eps * r for n, r in raw_er.items()})
    eps_k = 0.2 * 384 / (26 + 42)
    assert erk == pytest.approx({"x": eps_k * 26 / 128, "y": eps_k * 42 / 256})


# --------------------------------------------------------------------------------------
# allocations: uniform / global / min_keep / allowed
# --------------------------------------------------------------------------------------
def _scores():
    return {"a": torch.tensor([[0.1, 0.9], [0.5, 0.3]]),
            "b": torch.tensor([0.02, 0.08, 0.005, 0.07, 0.06, 0.04])}


def test_uniform_counts():
    assert uniform_counts({"a": 10, "b": 7, "c": 3}, 0.7) == {"a": 3, "b": 2, "c": 1}
    assert uniform_counts({"a": 10}, 0.0) == {"a": 10}
    assert uniform_counts({"a": 10}, 1.0) == {"a": 0}


def test_global_vs_uniform_masks():
    s = _scores()
    # global, 5 of 10: every score of a (>= 0.1) beats every score of b but 0.08
    g = allocate(s, 0.5, "global")
    assert g["a"].tolist() == [[True, True], [True, True]]
    assert g["b"].tolist() == [False, True, False, False, False, False]
    assert torch.equal(global_masks(s, 0.5)["b"], g["b"])
    # uniform: a keeps 2 (0.9, 0.5), b keeps 3 (0.08, 0.07, 0.06)
    u = allocate(s, 0.5, "uniform")
    assert u["a"].tolist() == [[False, True], [True, False]]
    assert u["b"].tolist() == [False, True, False, True, True, False]
    for masks in (g, u):
        assert masks["a"].dtype == torch.bool and masks["a"].shape == (2, 2)


def test_global_min_keep():
    s = _scores()
    # min_keep 0.2: a reserves ceil(0.8) = 1 (0.9), b ceil(1.2) = 2 (0.08, 0.07);
    # the 2 left go globally: 0.5, 0.3 (from a)
    m = global_masks(s, 0.5, min_keep=0.2)
    assert m["a"].tolist() == [[False, True], [True, True]]
    assert m["b"].tolist() == [False, True, False, True, False, False]
    assert allocate(s, 0.5, "global", min_keep=0.2)["b"].tolist() == m["b"].tolist()


@pytest.mark.parametrize("min_keep", [0.05, 0.2, 0.35])
def test_min_keep_guarantees_ceil_per_layer(min_keep):
    g = torch.Generator().manual_seed(3)
    s = {"big": torch.rand(10, 10, generator=g) + 10, "small": torch.rand(7, 3, generator=g),
         "tiny": torch.rand(5, generator=g) * 1e-3}
    masks = global_masks(s, 0.6, min_keep=min_keep)
    assert sum(nnz(m) for m in masks.values()) == round(0.4 * 126)  # 50
    for name, sc in s.items():
        floor = math.ceil(min_keep * sc.numel())
        assert nnz(masks[name]) >= floor
        # the floor is the layer's own top scores
        top = sc.flatten().argsort(descending=True)[:floor]
        assert masks[name].flatten()[top].all()
    # 'big' (all scores > 10) takes the whole rest of the budget
    small_floor = math.ceil(min_keep * 21) + math.ceil(min_keep * 5)
    assert nnz(masks["big"]) == 50 - small_floor
    # without the floor, the small layers lose to 'big'
    plain = global_masks(s, 0.6)
    assert nnz(plain["tiny"]) == 0 and nnz(plain["small"]) == 0


def test_min_keep_exceeding_budget():
    s = _scores()
    # budget round(0.2 * 10) = 2, floor 1 + 2 = 3
    with pytest.raises(ValueError, match=r"min_keep=0\.2 keeps 3 weights, more than the 2"):
        global_masks(s, 0.8, min_keep=0.2)


def test_allowed_restricts_choices():
    s = _scores()
    allowed = {"a": torch.tensor([[True, False], [True, True]]), "b": torch.ones(6, dtype=torch.bool)}
    g = allocate(s, 0.5, "global", allowed=allowed)
    # candidates 0.1, 0.5, 0.3 (a) and all of b: top 5 = 0.5, 0.3, 0.1, 0.08, 0.07
    assert g["a"].tolist() == [[True, False], [True, True]]
    assert g["b"].tolist() == [False, True, False, True, False, False]
    u = allocate(s, 0.5, "uniform", allowed=allowed)
    assert u["a"].tolist() == [[False, False], [True, True]]
    # fewer allowed than the count: keeps only the allowed
    only_one = {"a": torch.tensor([[False, False], [False, True]]), "b": torch.zeros(6, dtype=torch.bool)}
    u = allocate(s, 0.5, "uniform", allowed=only_one)
    assert u["a"].tolist() == [[False, False], [False, True]] and nnz(u["b"]) == 0
    g = allocate(s, 0.5, "global", allowed=only_one)
    assert g["a"].tolist() == [[False, False], [False, True]] and nnz(g["b"]) == 0


def test_allocate_er_counts():
    s = {n: torch.rand(k) for n, k in KERNELS.items()}
    masks = allocate(s, 0.5, "erk", kernels=KERNELS)
    assert {n: nnz(m) for n, m in masks.items()} == {"a": 8, "b": round(200 * 0.768),
                                                     "c": round(288 * 0.3)}
    # the kept ones are each layer's top scores
    for n, m in masks.items():
        if not m.all():
            assert s[n][m].min() >= s[n][~m].max()
