"""Unit tests of the pruning rules (sparseprop.pruning): schedules, layer allocations,
scores and every pruner, each checked against values computed by hand in the test."""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseprop import SparseConv2d, SparseLinear
from sparseprop._sparse_module import SparseWeightModule
from sparseprop.pruning import (ACDCPruner, ACDCSchedule, CosineUpdateSchedule,
                                GradualMagnitudePruner, GradualSchedule, GraNetPruner,
                                IterativeMagnitudePruner,
                                IterativeSchedule, MagnitudePruner, RandomPruner, RigLPruner,
                                SNIPPruner, SynFlowPruner, cubic_sparsity, er_densities,
                                global_masks, scores, uniform_counts)
from sparseprop.pruning.allocation import allocate
from sparseprop.pruning.dynamic import drop_and_grow


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is faster (and avoids thread-pool stalls on busy machines);
    conftest's restore_global_state puts the thread count back."""
    torch.set_num_threads(1)
    yield


def mlp(sizes=(6, 16, 16, 3), seed=0, bn=False) -> nn.Sequential:
    """Linear / [BatchNorm1d] / ReLU stack; the Linear layers are named '0', '2', ... (no
    BN) or '0', '3', ... (with BN)."""
    torch.manual_seed(seed)
    mods = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        mods.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            if bn:
                mods.append(nn.BatchNorm1d(b))
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def linear_names(model):
    return [n for n, m in model.named_children() if isinstance(m, (nn.Linear, SparseLinear))]


def batches(n_steps, n=16, d_in=6, n_cls=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, d_in, generator=g), torch.randint(0, n_cls, (n,), generator=g))
            for _ in range(n_steps)]


def train_step(model, opt, x, y) -> float:
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def dense_weight(module) -> torch.Tensor:
    return module.weight.detach().clone()


def nnz(mask) -> int:
    return int(mask.sum())


def opt_params(opt):
    return [p for g in opt.param_groups for p in g["params"]]


def assert_optimizer_trains(model, opt):
    """The optimizer trains exactly the model's current parameters (same objects)."""
    assert {id(p) for p in opt_params(opt)} == {id(p) for p in model.parameters()}
    assert len(opt_params(opt)) == len(list(model.parameters()))


def erk_raw(k):
    n_out, n_in, kh, kw = k
    return (n_in + n_out + kh + kw) / (n_in * n_out * kh * kw)


# --------------------------------------------------------------------------------------
# cubic schedule
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("t, expected", [
    (0, 0.0), (9, 0.0), (10, 0.0),
    (35, 0.9 - 0.9 * 0.75 ** 3),  # (1 - 25/100)^3
    (60, 0.9 - 0.9 * 0.125),      # = 0.7875
    (85, 0.9 - 0.9 * 0.25 ** 3),
    (109, 0.9 - 0.9 * 0.01 ** 3),
    (110, 0.9), (111, 0.9), (10_000, 0.9),
])
def test_cubic_sparsity_values(t, expected):
    assert cubic_sparsity(t, 0.0, 0.9, 10, 110) == pytest.approx(expected, abs=1e-12)
    sched = GradualSchedule(0.0, 0.9, 10, 110, 5)
    assert sched.sparsity(t) == pytest.approx(expected, abs=1e-12)


def test_cubic_sparsity_nonzero_initial():
    # before start: the initial sparsity; midway: s_f + (s_i - s_f) / 8
    assert cubic_sparsity(3, 0.2, 0.9, 10, 110) == pytest.approx(0.2)
    assert cubic_sparsity(60, 0.2, 0.9, 10, 110) == pytest.approx(0.9 - 0.7 * 0.125)
    assert cubic_sparsity(110, 0.2, 0.9, 10, 110) == pytest.approx(0.9)
    assert cubic_sparsity(60, 0.2, 0.9, 10, 110) == pytest.approx(0.8125)


def test_cubic_sparsity_is_monotone():
    values = [cubic_sparsity(t, 0.1, 0.95, 5, 55) for t in range(70)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    # the cubic front-loads the pruning: half the time gives 7/8 of the increase
    assert values[30] - 0.1 == pytest.approx(0.85 * 7 / 8)


def test_gradual_is_update_every_frequency_and_at_end():
    sched = GradualSchedule(0.0, 0.9, 10, 45, 10)  # 35 is not a multiple of 10
    updates = [t for t in range(0, 80) if sched.is_update(t)]
    assert updates == [10, 20, 30, 40, 45]
    sched = GradualSchedule(0.0, 0.9, 0, 6, 2)
    assert [t for t in range(20) if sched.is_update(t)] == [0, 2, 4, 6]
    sched = GradualSchedule(0.0, 0.9, 3, 4, 7)
    assert [t for t in range(20) if sched.is_update(t)] == [3, 4]


# --------------------------------------------------------------------------------------
# other schedules
# --------------------------------------------------------------------------------------
def test_acdc_schedule_phases():
    sched = ACDCSchedule(total=20, warmup=4, sparse_length=3, dense_length=2,
                         final_sparse_length=5)
    # warmup 0-3 dense; 4-6 compressed; 7-8 dense; 9-11 compressed; 12-13 dense;
    # 14-16 would be the next compressed phase and runs into the final one (15-19).
    sparse_ticks = {4, 5, 6, 9, 10, 11, 14, 15, 16, 17, 18, 19}
    for t in range(20):
        assert sched.is_sparse(t) == (t in sparse_ticks), t
    for t in range(20, 30):
        assert sched.is_sparse(t)  # past the end: still compressed
    assert [t for t in range(30) if sched.starts_sparse_phase(t)] == [4, 9, 14]


def test_acdc_schedule_without_warmup_starts_sparse_at_zero():
    sched = ACDCSchedule(total=10, warmup=0, sparse_length=2, dense_length=2,
                         final_sparse_length=2)
    assert [sched.is_sparse(t) for t in range(10)] == [True, True, False, False, True, True,
                                                       False, False, True, True]
    assert [t for t in range(10) if sched.starts_sparse_phase(t)] == [0, 4, 8]


def test_cosine_update_schedule():
    sched = CosineUpdateSchedule(alpha=0.3, frequency=4, end_step=20)
    assert [t for t in range(40) if sched.is_update(t)] == [4, 8, 12, 16]
    assert sched.fraction(0) == pytest.approx(0.3)
    assert sched.fraction(10) == pytest.approx(0.15)
    assert sched.fraction(5) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert sched.fraction(20) == 0.0 and sched.fraction(25) == 0.0


def test_iterative_schedule():
    sched = IterativeSchedule(final_sparsity=0.875, rounds=3, round_length=5)
    assert sched.rate == pytest.approx(0.5)
    assert [sched.round_at(t) for t in range(25)] == \
        [0] * 5 + [1] + [0] * 4 + [2] + [0] * 4 + [3] + [0] * 9
    assert [sched.sparsity_after(r) for r in range(4)] == pytest.approx([0, 0.5, 0.75, 0.875])


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


# --------------------------------------------------------------------------------------
# scores
# --------------------------------------------------------------------------------------
def test_lamp_hand_values():
    w = torch.tensor([0.5, -2.0, 1.0, 0.0, 1.5])
    # squares 0.25, 4, 1, 0, 2.25; ascending: 0, 0.25, 1, 2.25, 4; suffix sums 7.5, 7.5,
    # 7.25, 6.25, 4
    expected = torch.tensor([0.25 / 7.5, 1.0, 1.0 / 7.25, 0.0, 2.25 / 6.25])
    torch.testing.assert_close(scores.lamp(w), expected)
    # a 2-D weight is one layer: one score of 1, the shape is kept, scaling changes nothing
    out = scores.lamp(torch.cat([w, w * 3]).view(2, 5))
    assert out.shape == (2, 5)
    assert out.max() == 1.0 and int((out == 1.0).sum()) == 1
    torch.testing.assert_close(scores.lamp(w * 7), expected)


def test_lamp_ties_are_stable_and_max_is_one():
    torch.testing.assert_close(scores.lamp(torch.tensor([1.0, -1.0])), torch.tensor([0.5, 1.0]))
    for scale in (1e-4, 1.0, 1e3):
        w = torch.randn(6, 5) * scale
        s = scores.lamp(w)
        assert s.flatten()[w.abs().argmax()] == pytest.approx(1.0)
        assert (s <= 1.0 + 1e-6).all() and (s >= 0).all()
        # order-preserving within a layer
        order = w.abs().flatten().argsort()
        assert (s.flatten()[order].diff() >= -1e-7).all()


def test_magnitude_and_gradient_scores():
    w = torch.tensor([[-3.0, 0.5], [0.0, 2.0]], requires_grad=True)
    assert scores.magnitude(w).tolist() == [[3.0, 0.5], [0.0, 2.0]]
    assert not scores.magnitude(w).requires_grad
    assert scores.gradient_magnitude(-w).tolist() == [[3.0, 0.5], [0.0, 2.0]]


# --------------------------------------------------------------------------------------
# MagnitudePruner (one-shot)
# --------------------------------------------------------------------------------------
def _hand_model():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_((torch.arange(16.0) - 7.5).view(4, 4) * torch.tensor([1.0, -1.0] * 8).view(4, 4))
        model[2].weight.copy_(torch.tensor([[0.1, -0.2, 0.3, -0.4], [0.5, -0.6, 0.7, -0.8]]))
    return model


def test_magnitude_pruner_keeps_largest():
    model = _hand_model()
    w0, w2 = dense_weight(model[0]), dense_weight(model[2])
    bias0 = model[0].bias.detach().clone()
    x = torch.randn(5, 4)
    pruner = MagnitudePruner(model, sparsity=0.75, sparse_from=0.7)
    # layer 0: |w| = 7.5, 6.5, ..., 0.5, 0.5, ..., 7.5: keep 4 = |w| > 6
    m0 = w0.abs() > 6
    assert nnz(m0) == 4
    # layer 2: 8 weights, keep 2: 0.7 and 0.8
    m2 = w2.abs() > 0.65
    assert nnz(m2) == 2
    assert isinstance(model[0], SparseLinear) and isinstance(model[2], SparseLinear)
    assert torch.equal(pruner.masks()["0"], m0) and torch.equal(pruner.masks()["2"], m2)
    assert torch.equal(model[0].weight.detach(), w0 * m0)
    assert torch.equal(model[2].weight.detach(), w2 * m2)
    assert torch.equal(model[0].bias.detach(), bias0)
    ref = torch.relu(x @ (w0 * m0).t() + bias0) @ (w2 * m2).t() + model[2].bias.detach()
    torch.testing.assert_close(model(x), ref)
    assert pruner.sparsity() == pytest.approx(0.75)


def test_magnitude_pruner_sparse_from():
    model = _hand_model()
    MagnitudePruner(model, sparsity=0.75, sparse_from=None)
    assert type(model[0]) is nn.Linear and type(model[2]) is nn.Linear
    assert nnz(model[0].weight != 0) == 4 and nnz(model[2].weight != 0) == 2
    model = _hand_model()
    MagnitudePruner(model, sparsity=0.75, sparse_from=0.8)  # not sparse enough to switch
    assert type(model[0]) is nn.Linear
    model = _hand_model()
    MagnitudePruner(model, sparsity=0.75, sparse_from=0.75)  # exactly at the threshold
    assert isinstance(model[0], SparseLinear)


def test_magnitude_pruner_at_later_tick():
    model = _hand_model()
    pruner = MagnitudePruner(model, sparsity=0.5, at=3, sparse_from=None)
    assert pruner.sparsity() == 0.0
    assert [pruner.step() for _ in range(5)] == [False, False, True, False, False]
    assert pruner.sparsity() == pytest.approx(0.5)


def test_magnitude_pruner_conv():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3),
                          nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    ref = copy.deepcopy(model)
    x = torch.randn(2, 3, 6, 6)
    pruner = MagnitudePruner(model, sparsity=0.8, sparse_from=0.7)
    assert isinstance(model[0], SparseConv2d) and isinstance(model[2], SparseConv2d)
    assert isinstance(model[4], SparseLinear)
    for name in ("0", "2", "4"):
        w = ref.get_submodule(name).weight.detach()
        k = round(0.2 * w.numel())
        threshold = w.abs().flatten().sort(descending=True).values[k - 1]
        expected = w.abs() >= threshold
        assert nnz(expected) == k
        assert torch.equal(pruner.masks()[name], expected)
        with torch.no_grad():
            ref.get_submodule(name).weight.mul_(expected)
    torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)


def test_magnitude_pruner_global_and_lamp():
    model = mlp((6, 16, 16, 3))
    with torch.no_grad():
        model[4].weight.mul_(1e-3)  # far smaller than the others
    ref = copy.deepcopy(model)
    pruner = MagnitudePruner(model, sparsity=0.9, allocation="global", sparse_from=None)
    ls = pruner.layer_sparsity()
    assert ls["4"] == 1.0  # global magnitude collapses the small layer
    total = 96 + 256 + 48
    assert sum(nnz(m) for m in pruner.masks().values()) == round(0.1 * total)
    # hand check: the kept weights are the top 40 |w| over all layers
    allw = torch.cat([ref.get_submodule(n).weight.detach().abs().flatten() for n in ("0", "2", "4")])
    threshold = allw.sort(descending=True).values[39]
    for n, m in pruner.masks().items():
        assert torch.equal(m, ref.get_submodule(n).weight.detach().abs() >= threshold)
    # LAMP, same model: every layer keeps at least its largest weight
    model = copy.deepcopy(ref)
    pruner = MagnitudePruner(model, sparsity=0.9, allocation="global", score="lamp", sparse_from=None)
    for n, m in pruner.masks().items():
        w = ref.get_submodule(n).weight.detach().abs()
        assert m.flatten()[w.argmax()]
    assert sum(nnz(m) for m in pruner.masks().values()) == round(0.1 * total)


def test_magnitude_pruner_layers_and_exclude():
    model = mlp((6, 8, 8, 3))
    pruner = MagnitudePruner(model, sparsity=0.5, layers=["0", "4.weight"], sparse_from=None)
    assert list(pruner.layers) == ["0", "4"]
    assert nnz(model[2].weight != 0) == 64
    assert nnz(model[0].weight != 0) == 24 and nnz(model[4].weight != 0) == 12
    model = mlp((6, 8, 8, 3))
    pruner = MagnitudePruner(model, sparsity=0.5, exclude=r"[24]", sparse_from=None)
    assert list(pruner.layers) == ["0"]


# --------------------------------------------------------------------------------------
# GradualMagnitudePruner
# --------------------------------------------------------------------------------------
def _gmp_expected(t):
    return cubic_sparsity(t, 0.0, 0.8, 2, 12)  # checked by hand in test_cubic_* above


def test_gmp_uniform_follows_schedule_and_masks_are_monotone():
    model = mlp((6, 16, 16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    pruner = GradualMagnitudePruner(model, opt, sparsity=0.8, start_step=2, end_step=12,
                                    frequency=3, sparse_from=None)
    numels = {"0": 96, "2": 256, "4": 48}
    hand = {2: 0.0, 5: 0.8 - 0.8 * 0.7 ** 3, 8: 0.8 - 0.8 * 0.4 ** 3, 11: 0.8 - 0.8 * 0.1 ** 3,
            12: 0.8}
    expected_counts = {n: k for n, k in numels.items()}
    prev = pruner.masks()
    for t, (x, y) in enumerate(batches(16), start=1):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for n in numels:  # the gradient of pruned weights is zeroed by the hook
            assert (model.get_submodule(n).weight.grad[~prev[n]] == 0).all()
        opt.step()
        changed = pruner.step()
        assert changed == (t in hand)
        if t in hand:
            assert _gmp_expected(t) == pytest.approx(hand[t])
            expected_counts = {n: round((1 - hand[t]) * k) for n, k in numels.items()}
        masks = pruner.masks()
        for n, k in numels.items():
            layer = model.get_submodule(n)
            assert type(layer) is nn.Linear
            assert nnz(masks[n]) == expected_counts[n], (t, n)
            assert not (masks[n] & ~prev[n]).any()  # never comes back
            assert (layer.weight.detach()[~masks[n]] == 0).all()
        prev = masks
    assert pruner.sparsity() == pytest.approx(1 - sum(round(0.2 * k) for k in numels.values()) / 400)


def test_gmp_global_reaches_target():
    model = mlp((6, 16, 16, 3))
    with torch.no_grad():
        model[2].weight.mul_(0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    pruner = GradualMagnitudePruner(model, opt, sparsity=0.85, end_step=6, frequency=2,
                                    scope="global", sparse_from=0.9)
    for x, y in batches(8):
        train_step(model, opt, x, y)
        pruner.step()
    kept = sum(nnz(m) for m in pruner.masks().values())
    assert kept == round(0.15 * 400)
    ls = pruner.layer_sparsity()
    assert len({round(v, 6) for v in ls.values()}) == 3  # not uniform
    assert ls["2"] > 0.85  # the scaled-down layer is pruned harder
    # layers at least sparse_from sparse run on the sparse kernels
    for n, s in ls.items():
        assert isinstance(model.get_submodule(n), SparseLinear) == (s >= 0.9)


def test_gmp_switches_to_sparse_and_keeps_training():
    model = mlp((6, 16, 16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = GradualMagnitudePruner(model, opt, sparsity=0.9, end_step=8, frequency=2,
                                    sparse_from=0.5)
    for t, (x, y) in enumerate(batches(12), start=1):
        train_step(model, opt, x, y)
        pruner.step()
        s = cubic_sparsity(min(t - t % 2, 8), 0.0, 0.9, 0, 8)
        for n in ("0", "2", "4"):
            assert isinstance(model.get_submodule(n), SparseLinear) == (s >= 0.5), (t, n)
        assert_optimizer_trains(model, opt)
    before = model[2].values.detach().clone()
    train_step(model, opt, *batches(1, seed=9)[0])
    assert not torch.equal(before, model[2].values.detach())


def test_gmp_leave_enabled_false_lifts_masks():
    model = mlp((6, 8, 8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = GradualMagnitudePruner(model, opt, sparsity=0.75, end_step=4, frequency=2,
                                    leave_enabled=False, sparse_from=0.5)
    data = batches(8)
    for t in range(1, 5):
        train_step(model, opt, *data[t - 1])
        pruner.step()
    assert pruner.sparsity() == pytest.approx(0.75, abs=0.01)
    assert all(isinstance(model.get_submodule(n), SparseLinear) for n in ("0", "2", "4"))
    train_step(model, opt, *data[4])
    assert pruner.step() is True  # t = 5 = end_step + 1: masks lifted
    assert pruner.sparsity() == 0.0
    assert all(type(model.get_submodule(n)) is nn.Linear for n in ("0", "2", "4"))
    assert all(m.all() for m in pruner.masks().values())
    assert_optimizer_trains(model, opt)
    zeros = (model[2].weight == 0).clone()
    assert nnz(zeros) >= 48  # the pruned weights restart at zero
    for t in range(6, 9):
        train_step(model, opt, *data[t - 1])
        assert pruner.step() is False
    assert nnz(zeros & (model[2].weight != 0)) > 0  # and grow back


def test_gmp_leave_enabled_true_keeps_masks():
    model = mlp((6, 8, 8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = GradualMagnitudePruner(model, opt, sparsity=0.75, end_step=4, frequency=2,
                                    sparse_from=None)
    for x, y in batches(10):
        train_step(model, opt, x, y)
        pruner.step()
    kept = {n: nnz(m) for n, m in pruner.masks().items()}
    assert kept == {"0": round(0.25 * 48), "2": round(0.25 * 64), "4": round(0.25 * 24)}
    assert nnz(model[2].weight != 0) == 16


# --------------------------------------------------------------------------------------
# IterativeMagnitudePruner
# --------------------------------------------------------------------------------------
def _imp_model():
    return mlp((4, 8, 8, 4), seed=3, bn=True)  # linears '0' (32), '3' (64), '6' (32)


def test_imp_rounds_rewind_and_reset():
    model = _imp_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = IterativeMagnitudePruner(model, opt, sparsity=0.875, rounds=3, round_length=4,
                                      rewind_step=1)
    data = batches(20, d_in=4, n_cls=4)
    saved = None
    prev = pruner.masks()
    history_rounds = []
    for t in range(1, 21):
        train_step(model, opt, *data[t - 1])
        changed = pruner.step()
        if t == 1:  # the rewind point: state after step 1
            saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        assert changed == (t in (4, 8, 12))
        masks = pruner.masks()
        kept = sum(nnz(m) for m in masks.values())
        r = min(t // 4, 3)
        assert kept == 128 // 2 ** r, t  # rate 0.5: 64, 32, 16 weights
        assert pruner.sparsity() == pytest.approx(1 - 0.5 ** r)
        for n, m in masks.items():
            assert not (m & ~prev[n]).any()
        if changed:
            history_rounds.append(t)
            assert len(opt.state) == 0  # reset_optimizer
            for n in ("0", "3", "6"):
                layer = model.get_submodule(n)
                torch.testing.assert_close(layer.weight.detach(), saved[f"{n}.weight"] * masks[n],
                                           rtol=0, atol=0)
                assert torch.equal(layer.bias.detach(), saved[f"{n}.bias"])
            for n in ("1", "4"):
                bn = model.get_submodule(n)
                for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                    assert torch.equal(getattr(bn, k).detach(), saved[f"{n}.{k}"]), (t, n, k)
            assert_optimizer_trains(model, opt)
        prev = masks
    assert history_rounds == [4, 8, 12]
    # global allocation: some layer is past the 0.7 default and runs sparse
    assert any(isinstance(model.get_submodule(n), SparseLinear) for n in ("0", "3", "6"))


def test_imp_without_optimizer_reset_and_uniform():
    model = _imp_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = IterativeMagnitudePruner(model, opt, sparsity=0.75, rounds=2, round_length=3,
                                      allocation="uniform", reset_optimizer=False, sparse_from=None)
    assert pruner.rewind_point is not None  # rewind_step 0: saved at creation
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    data = batches(6, d_in=4, n_cls=4)
    for t in range(1, 4):
        train_step(model, opt, *data[t - 1])
        pruner.step()
    assert len(opt.state) > 0
    rate = 0.5  # 1 - (1 - 0.75) ** (1 / 2)
    assert {n: nnz(m) for n, m in pruner.masks().items()} == \
        {"0": round(32 * (1 - rate)), "3": round(64 * (1 - rate)), "6": round(32 * (1 - rate))}
    for n in ("0", "3", "6"):
        assert torch.equal(model.get_submodule(n).weight.detach(),
                           init[f"{n}.weight"] * pruner.masks()[n])
    assert torch.equal(model[1].running_mean, init["1.running_mean"])


# --------------------------------------------------------------------------------------
# random / SNIP / SynFlow at initialization
# --------------------------------------------------------------------------------------
def _conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 4))


@pytest.mark.parametrize("kind", ["er", "erk"])
def test_random_pruner_er_densities(kind):
    model = _conv_net()
    pruner = RandomPruner(model, sparsity=0.8, allocation=kind, seed=5)
    kernels = {"0": (8, 3, 3, 3), "2": (8, 8, 3, 3), "4": (32, 128, 1, 1), "6": (4, 32, 1, 1)}
    assert pruner.kernels() == kernels
    expected = er_densities(kernels, 0.8, kind)
    if kind == "erk":  # hand check: eps over the layers, the first conv saturates?
        numel = {n: math.prod(k) for n, k in kernels.items()}
        budget = 0.2 * sum(numel.values())
        eps = budget / sum(erk_raw(k) * numel[n] for n, k in kernels.items())
        if all(eps * erk_raw(k) <= 1 for k in kernels.values()):
            assert expected == pytest.approx({n: eps * erk_raw(k) for n, k in kernels.items()})
    for n, mask in pruner.masks().items():
        assert nnz(mask) == round(expected[n] * mask.numel()), n
    total = sum(m.numel() for m in pruner.masks().values())
    assert pruner.sparsity() == pytest.approx(0.8, abs=2 / total)
    # same seed, same masks; another seed, other masks
    again = RandomPruner(_conv_net(), sparsity=0.8, allocation=kind, seed=5).masks()
    other = RandomPruner(_conv_net(), sparsity=0.8, allocation=kind, seed=6).masks()
    assert all(torch.equal(again[n], m) for n, m in pruner.masks().items())
    assert any(not torch.equal(other[n], m) for n, m in pruner.masks().items())


def test_random_pruner_uniform_and_weights_untouched():
    model = _conv_net()
    ref = copy.deepcopy(model)
    pruner = RandomPruner(model, sparsity=0.6, allocation="uniform", sparse_from=None)
    for n, mask in pruner.masks().items():
        assert nnz(mask) == round(0.4 * mask.numel())
        w = ref.get_submodule(n).weight.detach()
        assert torch.equal(model.get_submodule(n).weight.detach(), w * mask)


def test_snip_scores_and_pruner():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    ref = copy.deepcopy(model)
    x, y = batches(1)[0]
    # hand computation of |g * w| on the dense model
    clone = copy.deepcopy(ref)
    loss = F.cross_entropy(clone(x), y)
    g0, g3 = torch.autograd.grad(loss, [clone[0].weight, clone[3].weight])
    sal = {"0": (g0 * clone[0].weight).abs().detach(), "3": (g3 * clone[3].weight).abs().detach()}
    pruner = SNIPPruner(model, sparsity=0.8, inputs=x, targets=y)
    allsal = torch.cat([s.flatten() for s in sal.values()])
    k = round(0.2 * allsal.numel())
    threshold = allsal.sort(descending=True).values[k - 1]
    masks = pruner.masks()
    assert sum(nnz(m) for m in masks.values()) == k
    for n, m in masks.items():
        assert torch.equal(m, sal[n] >= threshold), n
        assert torch.equal(model.get_submodule(n).weight.detach(),
                           ref.get_submodule(n).weight.detach() * m)
        assert torch.equal(model.get_submodule(n).bias.detach(), ref.get_submodule(n).bias.detach())
    for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(model[1], key).detach(), getattr(ref[1], key).detach()), key
    assert all(p.grad is None for p in model.parameters())
    assert pruner.sparsity() == pytest.approx(1 - k / (96 + 48))


def _deep_narrow(depth=8, width=8, seed=0, bias=True):
    torch.manual_seed(seed)
    mods = [nn.Linear(4, width, bias=bias), nn.ReLU()]
    for _ in range(depth - 2):
        mods += [nn.Linear(width, width, bias=bias), nn.ReLU()]
    mods.append(nn.Linear(width, 2, bias=bias))
    return nn.Sequential(*mods)


def _synflow_collapse_check(bias):
    model = _deep_narrow(bias=bias)
    with torch.no_grad():
        model[6].weight.mul_(1e-3)
    ref = copy.deepcopy(model)
    x = torch.randn(3, 4)
    # global magnitude at this sparsity empties the scaled-down layer...
    collapsed = MagnitudePruner(copy.deepcopy(ref), sparsity=0.97, allocation="global",
                                sparse_from=None)
    assert collapsed.layer_sparsity()["6"] == 1.0
    # ...SynFlow does not empty any layer
    pruner = SynFlowPruner(model, sparsity=0.97, example_input=x, iterations=30, sparse_from=None)
    masks = pruner.masks()
    total = sum(m.numel() for m in masks.values())
    assert sum(nnz(m) for m in masks.values()) == round(0.03 * total)
    assert all(nnz(m) > 0 for m in masks.values())
    # the masked all-positive network still carries flow from input to output
    with torch.no_grad():
        h = torch.ones(1, 4, dtype=torch.float64)
        for n in linear_names(ref):
            h = h @ (ref.get_submodule(n).weight.double().abs() * masks[n]).t()
        assert h.sum() > 0
    for n in linear_names(ref):
        assert torch.equal(model.get_submodule(n).weight.detach(),
                           ref.get_submodule(n).weight.detach() * masks[n])
        if bias:
            assert torch.equal(model.get_submodule(n).bias.detach(),
                               ref.get_submodule(n).bias.detach())


def test_synflow_avoids_layer_collapse_without_biases():
    _synflow_collapse_check(bias=False)


def test_synflow_avoids_layer_collapse_with_default_biases():
    _synflow_collapse_check(bias=True)


def test_synflow_collapses_with_one_iteration_but_not_with_many():
    # single-shot SynFlow is not collapse-free: the iterations are what matters
    model = _deep_narrow(bias=False)
    one = SynFlowPruner(copy.deepcopy(model), sparsity=0.97, example_input=torch.randn(1, 4),
                        iterations=1, sparse_from=None)
    assert any(nnz(m) == 0 for m in one.masks().values())
    many = SynFlowPruner(model, sparsity=0.97, example_input=torch.randn(1, 4), iterations=20,
                         sparse_from=None)
    assert all(nnz(m) > 0 for m in many.masks().values())


def test_synflow_one_iteration_scores():
    # one iteration: a single global threshold on |dR/dw * w| of the abs network
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    ref = copy.deepcopy(model)
    w0 = ref[0].weight.detach().double().abs().requires_grad_()
    w2 = ref[2].weight.detach().double().abs().requires_grad_()
    b0, b2 = ref[0].bias.detach().double().abs(), ref[2].bias.detach().double().abs()
    r = (torch.relu(torch.ones(1, 3, dtype=torch.float64) @ w0.t() + b0) @ w2.t() + b2).sum()
    g0, g2 = torch.autograd.grad(r, [w0, w2])
    sal = torch.cat([(g0 * w0).flatten(), (g2 * w2).flatten()]).detach()
    k = round(0.5 * 20)
    keep = torch.zeros(20, dtype=torch.bool)
    keep[sal.argsort(descending=True)[:k]] = True
    pruner = SynFlowPruner(model, sparsity=0.5, example_input=torch.randn(7, 3), iterations=1)
    assert torch.equal(pruner.masks()["0"].flatten(), keep[:12])
    assert torch.equal(pruner.masks()["2"].flatten(), keep[12:])


# --------------------------------------------------------------------------------------
# AC/DC
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparse_from", [0.7, None])
def test_acdc_pruner_phases(sparse_from):
    model = mlp((6, 16, 16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = ACDCPruner(model, opt, sparsity=0.8, total=20, warmup=4, sparse_length=3,
                        dense_length=2, final_sparse_length=5, sparse_from=sparse_from)
    sparse_ticks = {4, 5, 6, 9, 10, 11, 14, 15, 16, 17, 18, 19}
    numels = {"0": 96, "2": 256, "4": 48}
    prev_masks, prev_sparse = pruner.masks(), False
    changes = []
    for t, (x, y) in enumerate(batches(22), start=1):
        kept_before = {n: model.get_submodule(n).weight.detach()[prev_masks[n]].clone()
                       for n in numels}
        train_step(model, opt, x, y)
        if pruner.step():
            changes.append(t)
        sparse_now = t in sparse_ticks or t >= 20
        if prev_sparse and sparse_now:  # inside a compressed phase the kept weights train
            for n in numels:
                now = model.get_submodule(n).weight.detach()[prev_masks[n]]
                assert not torch.equal(now, kept_before[n]), (t, n)
        masks = pruner.masks()
        for n, k in numels.items():
            layer = model.get_submodule(n)
            if sparse_now:
                assert nnz(masks[n]) == round(0.2 * k)
                expect_cls = SparseLinear if sparse_from is not None else nn.Linear
                assert type(layer) is expect_cls, (t, n)
                assert (layer.weight.detach()[~masks[n]] == 0).all()
                if prev_sparse:  # the mask is fixed for the whole phase
                    assert torch.equal(masks[n], prev_masks[n])
                else:  # a new phase: a new mask
                    assert not torch.equal(masks[n], prev_masks[n])
            else:
                assert type(layer) is nn.Linear, (t, n)
                assert masks[n].all()
                if prev_sparse:  # decompressed: pruned weights restart from zero
                    assert (layer.weight.detach()[~prev_masks[n]] == 0).all()
        assert_optimizer_trains(model, opt)
        prev_masks, prev_sparse = masks, sparse_now
    assert changes == [4, 7, 9, 12, 14]


def test_acdc_new_phase_keeps_top_magnitudes():
    model = mlp((6, 8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner = ACDCPruner(model, opt, sparsity=0.5, total=10, warmup=2, sparse_length=2,
                        dense_length=2, sparse_from=None)
    data = batches(4)
    train_step(model, opt, *data[0])
    pruner.step()
    train_step(model, opt, *data[1])
    w = {n: model.get_submodule(n).weight.detach().clone() for n in ("0", "2")}
    assert pruner.step()  # t = 2: first compressed phase
    for n, m in pruner.masks().items():
        assert nnz(m) == w[n].numel() // 2
        assert w[n].abs()[m].min() > w[n].abs()[~m].max()
        assert torch.equal(model.get_submodule(n).weight.detach(), w[n] * m)


# --------------------------------------------------------------------------------------
# RigL
# --------------------------------------------------------------------------------------
def _dense_grads(model, names, x, y):
    """d loss / d dense weight of each layer, on a dense copy with the same values."""
    twin = nn.Sequential(*[(m.to_dense() if isinstance(m, SparseWeightModule) else copy.deepcopy(m))
                           for m in model])
    loss = F.cross_entropy(twin(x), y)
    grads = torch.autograd.grad(loss, [twin.get_submodule(n).weight for n in names])
    return dict(zip(names, grads))


def test_drop_and_grow_hand_example():
    w = torch.tensor([[0.5, 0.0, -0.1], [0.3, 0.0, 0.9]])
    mask = torch.tensor([[True, False, True], [True, False, True]])
    grad = torch.tensor([[0.0, 5.0, 0.0], [0.0, 1.0, 0.0]])
    # drop the 2 smallest kept |w| (-0.1 at (0,2), 0.3 at (1,0)), grow (0,1) and (1,1)
    out = drop_and_grow(w, mask, grad, 2)
    assert out.tolist() == [[True, True, False], [False, True, True]]
    assert nnz(out) == nnz(mask)
    # a just-dropped position can be grown back when its gradient is the largest
    grad2 = torch.tensor([[0.0, 5.0, 10.0], [0.0, 1.0, 0.0]])
    assert drop_and_grow(w, mask, grad2, 1).tolist() == mask.tolist()
    # count is limited by the free positions (2 here) and 0 changes nothing
    big = drop_and_grow(w, mask, grad, 5)
    assert nnz(big) == 4 and big.tolist() == [[True, True, False], [False, True, True]]
    assert drop_and_grow(w, mask, grad, 0) is mask


def _run_rigl_checked(model, opt, pruner, names, data, alpha, end):
    """Train on ``data`` and check every RigL update against a hand implementation:
    drop the ``int(fraction * nnz)`` smallest |w| (after the optimizer step), grow the largest
    |dense grad| (of that step's backward) outside what is left. Returns the update ticks."""
    counts = {n: nnz(m) for n, m in pruner.masks().items()}
    updates, moved = [], 0
    for t, (x, y) in enumerate(data, start=1):
        before = pruner.masks()
        grads = _dense_grads(model, names, x, y)
        train_step(model, opt, x, y)
        weights_after_step = pruner.weights()
        changed = pruner.step()
        masks = pruner.masks()
        assert {n: nnz(m) for n, m in masks.items()} == counts, t  # sparsity is constant
        if not changed:
            assert all(torch.equal(masks[n], before[n]) for n in names)
            continue
        updates.append(t)
        fraction = alpha / 2 * (1 + math.cos(math.pi * t / end))
        for n in names:
            count = int(fraction * counts[n])
            dropped = before[n] & ~masks[n]
            grown = masks[n] & ~before[n]
            assert nnz(dropped) == nnz(grown) <= count
            moved += nnz(dropped)
            w = weights_after_step[n].abs().flatten()
            kept_idx = torch.nonzero(before[n].flatten()).flatten()
            order = kept_idx[w[kept_idx].argsort(descending=True)]
            kept = torch.zeros(w.numel(), dtype=torch.bool)
            kept[order[:counts[n] - count]] = True
            g = grads[n].abs().flatten().masked_fill(kept, -1.0)
            expected = kept.clone()
            expected[g.argsort(descending=True)[:count]] = True
            assert torch.equal(masks[n].flatten(), expected), (t, n)
            # regrown weights start at zero, pruned ones are zero
            new_w = model.get_submodule(n).weight.detach()
            assert (new_w[grown] == 0).all() and (new_w[~masks[n]] == 0).all()
        assert_optimizer_trains(model, opt)
    assert moved > 0  # the masks really changed
    return updates


def test_rigl_update_counts_and_constant_sparsity():
    model = mlp((6, 16, 16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    f, end, alpha = 3, 14, 0.5
    pruner = RigLPruner(model, opt, sparsity=0.8, end_step=end, frequency=f, alpha=alpha)
    names = ["0", "2", "4"]
    # ERK by hand: raw (6+16+2)/96 = 1/4, (16+16+2)/256, (16+3+2)/48; eps = 0.2*400 / (24+34+21)
    eps = 80 / 79
    counts = {"0": round(eps / 4 * 96), "2": round(eps * 34 / 256 * 256), "4": round(eps * 21 / 48 * 48)}
    assert {n: nnz(m) for n, m in pruner.masks().items()} == counts
    # mixed forms: '4' is below sparse_from = 0.7, the others above
    assert [type(model.get_submodule(n)) for n in names] == [SparseLinear, SparseLinear, nn.Linear]
    updates = _run_rigl_checked(model, opt, pruner, names, batches(20), alpha, end)
    # frequency 3 before end_step 14: 3, 6, 9, 12 (never at or after 14)
    assert updates == [3, 6, 9, 12]
    assert pruner.updates == 4
    assert not any(layer.capturing for layer in pruner.layers.values())


def test_rigl_conv_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner = RigLPruner(model, opt, sparsity=0.85, end_step=6, frequency=2, alpha=0.5,
                        allocation="uniform")
    assert [type(model[i]) for i in (0, 2, 4)] == [SparseConv2d, SparseConv2d, SparseLinear]
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 4, (4,), generator=g))
            for _ in range(6)]
    updates = _run_rigl_checked(model, opt, pruner, ["0", "2", "4"], data, 0.5, 6)
    assert updates == [2, 4]



def test_rigl_dense_layers_with_sparse_from_none():
    model = mlp((6, 16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner = RigLPruner(model, opt, sparsity=0.75, end_step=10, frequency=2, alpha=0.4,
                        allocation="uniform", sparse_from=None)
    first = pruner.masks()
    for x, y in batches(10):
        train_step(model, opt, x, y)
        pruner.step()
        for n, m in pruner.masks().items():
            assert nnz(m) == m.numel() // 4
            assert type(model.get_submodule(n)) is nn.Linear
            assert (model.get_submodule(n).weight.detach()[~m] == 0).all()
    assert pruner.updates == 4  # 2, 4, 6, 8
    assert any(not torch.equal(first[n], m) for n, m in pruner.masks().items())


# --------------------------------------------------------------------------------------
# optimizer state across a form switch
# --------------------------------------------------------------------------------------
def test_sgd_momentum_follows_dense_to_sparse():
    model = mlp((6, 16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, y in batches(3):
        train_step(model, opt, x, y)
    old_w = model[0].weight
    buf = opt.state[old_w]["momentum_buffer"].clone()
    bias = model[0].bias
    bias_buf = opt.state[bias]["momentum_buffer"].clone()
    pruner = MagnitudePruner(model, opt, sparsity=0.75, sparse_from=0.5)
    assert isinstance(model[0], SparseLinear)
    mask = pruner.masks()["0"]
    values = model[0].values
    assert torch.equal(opt.state[values]["momentum_buffer"], buf[mask])  # row-major CSR order
    assert old_w not in opt.state
    assert any(p is values for p in opt_params(opt)) and not any(p is old_w for p in opt_params(opt))
    assert model[0].bias is bias and torch.equal(opt.state[bias]["momentum_buffer"], bias_buf)
    assert_optimizer_trains(model, opt)
    # one more SGD step by hand: buf' = 0.9 buf + g, v' = v - lr buf'
    x, y = batches(1, seed=7)[0]
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    g = values.grad.clone()
    v = values.detach().clone()
    opt.step()
    torch.testing.assert_close(values.detach(), v - 0.05 * (0.9 * buf[mask] + g))


def test_adam_state_follows_dense_to_sparse_and_back():
    model = mlp((6, 16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    data = batches(8)
    for x, y in data[:2]:
        train_step(model, opt, x, y)
    st = {k: v.clone() for k, v in opt.state[model[0].weight].items()}
    pruner = GradualMagnitudePruner(model, opt, sparsity=0.75, start_step=0, end_step=1,
                                    leave_enabled=False, sparse_from=0.5)
    # t=0 applied sparsity 0 (nothing); step to t=1: 0.75 -> sparse
    old_w = model[0].weight
    train_step(model, opt, *data[2])
    st = {k: v.clone() for k, v in opt.state[old_w].items()}
    pruner.step()
    assert isinstance(model[0], SparseLinear)
    mask = pruner.masks()["0"]
    new = opt.state[model[0].values]
    assert torch.equal(new["exp_avg"], st["exp_avg"][mask])
    assert torch.equal(new["exp_avg_sq"], st["exp_avg_sq"][mask])
    assert float(new["step"]) == float(st["step"]) == 3.0
    # t=2: masks lifted, back to dense: state scattered, zero at the pruned positions
    train_step(model, opt, *data[3])
    sparse_state = {k: v.clone() for k, v in opt.state[model[0].values].items()}
    pruner.step()
    assert type(model[0]) is nn.Linear
    dense_state = opt.state[model[0].weight]
    for key in ("exp_avg", "exp_avg_sq"):
        expected = torch.zeros(16, 6)
        expected[mask] = sparse_state[key]
        assert torch.equal(dense_state[key], expected), key
    assert float(dense_state["step"]) == 4.0
    assert_optimizer_trains(model, opt)


# --------------------------------------------------------------------------------------
# unit="epoch" and history
# --------------------------------------------------------------------------------------
def test_epoch_unit():
    model = mlp((6, 8, 3))
    pruner = GradualMagnitudePruner(model, sparsity=0.75, end_step=4, unit="epoch",
                                    sparse_from=None)
    for _ in range(10):
        assert pruner.step() is False
    assert pruner.t == 0 and pruner.sparsity() == 0.0
    expected = {1: 0.75 - 0.75 * 0.75 ** 3, 2: 0.75 - 0.75 / 8, 3: 0.75 - 0.75 / 64, 4: 0.75}
    for epoch in range(1, 6):
        assert pruner.epoch_step() == (epoch <= 4)
        assert pruner.t == epoch
        if epoch in expected:
            assert pruner.layer_sparsity()["0"] == pytest.approx(
                1 - round((1 - expected[epoch]) * 48) / 48)
    # a step-unit pruner ignores epoch_step
    model = mlp((6, 8, 3))
    pruner = MagnitudePruner(model, sparsity=0.5, at=1, sparse_from=None)
    assert pruner.epoch_step() is False and pruner.t == 0 and pruner.sparsity() == 0.0
    assert pruner.step() is True and pruner.sparsity() == pytest.approx(0.5)


def test_epoch_unit_step_still_enforces_masks():
    model = mlp((6, 8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = MagnitudePruner(model, opt, sparsity=0.5, unit="epoch", sparse_from=None)
    mask = pruner.masks()["0"]
    with torch.no_grad():
        model[0].weight.add_(1.0)  # something outside the optimizer writes the weights
    pruner.step()
    assert (model[0].weight.detach()[~mask] == 0).all()
    assert pruner.t == 0


def test_history_records_changes():
    model = mlp((6, 16, 16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner = GradualMagnitudePruner(model, opt, sparsity=0.8, start_step=2, end_step=12,
                                    frequency=3, sparse_from=None)
    assert pruner.history == []
    for x, y in batches(14):
        train_step(model, opt, x, y)
        pruner.step()
    hand = {2: 0.0, 5: 0.8 - 0.8 * 0.7 ** 3, 8: 0.8 - 0.8 * 0.4 ** 3, 11: 0.8 - 0.8 * 0.1 ** 3,
            12: 0.8}
    numels = {"0": 96, "2": 256, "4": 48}
    assert [h["step"] for h in pruner.history] == [2, 5, 8, 11, 12]
    for h in pruner.history:
        s = hand[h["step"]]
        expected = {n: 1 - round((1 - s) * k) / k for n, k in numels.items()}
        assert h["layers"] == pytest.approx(expected)
        kept = sum(round((1 - s) * k) for k in numels.values())
        assert h["sparsity"] == pytest.approx(1 - kept / 400)
    # the log is a record: later changes do not rewrite it
    assert pruner.history[0]["layers"] == {"0": 0.0, "2": 0.0, "4": 0.0}


def test_history_of_one_shot_and_acdc():
    model = mlp((6, 8, 3))
    pruner = MagnitudePruner(model, sparsity=0.5, sparse_from=None)
    assert len(pruner.history) == 1 and pruner.history[0]["step"] == 0
    assert pruner.history[0]["layers"] == {"0": 0.5, "2": 0.5}
    model = mlp((6, 8, 3))
    pruner = ACDCPruner(model, sparsity=0.5, total=8, warmup=1, sparse_length=2, dense_length=2,
                        sparse_from=None)
    for _ in range(8):
        pruner.step()
    assert [(h["step"], h["sparsity"]) for h in pruner.history] == \
        [(1, 0.5), (3, 0.0), (5, 0.5)]


# --------------------------------------------------------------------------------------
# resume from a checkpoint
# --------------------------------------------------------------------------------------
def _make_gmp(seed):
    model = mlp((6, 16, 16, 3), seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    pruner = GradualMagnitudePruner(model, opt, sparsity=0.85, start_step=1, end_step=9,
                                    frequency=2, sparse_from=0.5)
    return model, opt, pruner


def _make_rigl(seed):
    model = mlp((6, 16, 16, 3), seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    pruner = RigLPruner(model, opt, sparsity=0.8, end_step=12, frequency=3, alpha=0.5, seed=11)
    return model, opt, pruner


def _make_imp(seed):
    model = mlp((4, 8, 8, 4), seed=seed, bn=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = IterativeMagnitudePruner(model, opt, sparsity=0.875, rounds=3, round_length=3,
                                      rewind_step=1)
    return model, opt, pruner


def _run(model, opt, pruner, data):
    losses = []
    for x, y in data:
        losses.append(train_step(model, opt, x, y))
        pruner.step()
    return losses


@pytest.mark.parametrize("make, d_in, n_cls, k, m", [
    (_make_gmp, 6, 3, 4, 8),
    (_make_gmp, 6, 3, 5, 3),
    (_make_rigl, 6, 3, 2, 9),    # checkpoint while capturing the gradient for t = 3
    (_make_rigl, 6, 3, 6, 6),    # right after an update
    (_make_imp, 4, 4, 2, 9),     # after the rewind point, before round 1
    (_make_imp, 4, 4, 4, 6),     # in round 2
], ids=["gmp-4", "gmp-5", "rigl-2", "rigl-6", "imp-2", "imp-4"])
def test_resume_matches_uninterrupted(make, d_in, n_cls, k, m):
    data = batches(k + m, d_in=d_in, n_cls=n_cls)
    model, opt, pruner = make(0)
    full_losses = _run(model, opt, pruner, data)
    full_masks, full_state = pruner.masks(), model.state_dict()
    full_history = [h["step"] for h in pruner.history]
    full_types = [type(mod) for mod in model]

    model, opt, pruner = make(0)
    first = _run(model, opt, pruner, data[:k])
    assert first == full_losses[:k]
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "pruner": pruner.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    del model, opt, pruner

    model, opt, pruner = make(1)  # a different init: everything must come from the checkpoint
    pruner.load_state_dict(ckpt["pruner"])
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    assert pruner.t == k
    assert_optimizer_trains(model, opt)
    rest = _run(model, opt, pruner, data[k:])
    assert rest == full_losses[k:]
    for n, mask in pruner.masks().items():
        assert torch.equal(mask, full_masks[n]), n
    state = model.state_dict()
    assert state.keys() == full_state.keys()
    for key, value in state.items():
        assert torch.equal(value, full_state[key]), key
    assert [h["step"] for h in pruner.history] == full_history
    assert [type(mod) for mod in model] == full_types


def test_resume_in_memory_history_and_types():
    data = batches(10)
    model, opt, pruner = _make_gmp(0)
    _run(model, opt, pruner, data[:6])
    # deepcopy: torch's Optimizer.load_state_dict shares same-dtype state tensors with the
    # source dict, so without it both optimizers would update the same momentum buffers.
    ckpt = copy.deepcopy({"model": model.state_dict(), "optimizer": opt.state_dict(),
                          "pruner": pruner.state_dict()})
    types = [type(m) for m in model]
    hist = [h["step"] for h in pruner.history]
    model2, opt2, pruner2 = _make_gmp(1)
    pruner2.load_state_dict(ckpt["pruner"])
    assert [type(m) for m in model2] == types
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optimizer"])
    assert [h["step"] for h in pruner2.history] == hist == [1, 3, 5]
    assert _run(model2, opt2, pruner2, data[6:]) == _run(model, opt, pruner, data[6:])


# --------------------------------------------------------------------------------------
# GraNet
# --------------------------------------------------------------------------------------
def test_granet_follows_schedule_with_regrowth():
    model = mlp((6, 16, 16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner = GraNetPruner(model, opt, sparsity=0.8, end_step=8, frequency=2, alpha=0.3,
                          allocation="uniform", sparse_from=None)
    numels = {"0": 96, "2": 256, "4": 48}
    hand = {0: 0.0, 2: 0.8 - 0.8 * 0.75 ** 3, 4: 0.8 - 0.8 / 8, 6: 0.8 - 0.8 / 64, 8: 0.8}
    regrown = 0
    for t, (x, y) in enumerate(batches(10), start=1):
        before = pruner.masks()
        train_step(model, opt, x, y)
        assert pruner.step() == (t in hand)
        masks = pruner.masks()
        s = hand[max(k for k in hand if k <= t)]
        for n, k in numels.items():
            assert nnz(masks[n]) == round((1 - s) * k), (t, n)
            grown = masks[n] & ~before[n]
            regrown += nnz(grown)
            assert (model.get_submodule(n).weight.detach()[grown] == 0).all()
            if t >= 8:  # no regrowth at end_step
                assert not grown.any()
    assert regrown > 0


# --------------------------------------------------------------------------------------
# model structure: shared modules, tied and frozen weights
# --------------------------------------------------------------------------------------
def test_same_module_under_two_names_is_one_layer():
    torch.manual_seed(0)
    lin = nn.Linear(8, 8)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = MagnitudePruner(model, opt, sparsity=0.75)
    assert list(pruner.layers) == ["0"]
    assert isinstance(model[0], SparseLinear) and model[0] is model[2]
    assert model[0].nnz == 16
    assert_optimizer_trains(model, opt)


def test_tied_weights_stay_dense_and_tied():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    model[2].weight = model[0].weight
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = MagnitudePruner(model, opt, sparsity=0.75)
    assert type(model[0]) is nn.Linear and type(model[2]) is nn.Linear
    assert model[0].weight is model[2].weight
    assert nnz(model[0].weight != 0) == 16
    train_step(model, opt, torch.randn(4, 8), torch.randint(0, 8, (4,)))
    pruner.step()
    assert model[0].weight is model[2].weight and nnz(model[0].weight != 0) == 16


@pytest.mark.parametrize("sparse_from", [None, 0.5])
def test_frozen_layer_is_pruned_and_stays_frozen(sparse_from):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    model[0].requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    pruner = MagnitudePruner(model, opt, sparsity=0.5, sparse_from=sparse_from)
    frozen = pruner.layers["0"].parameters()[0]
    assert not frozen.requires_grad
    assert all(frozen is not p for g in opt.param_groups for p in g["params"])
    assert nnz(pruner.masks()["0"]) == 32
    train_step(model, opt, torch.randn(4, 8), torch.randint(0, 4, (4,)))
    assert pruner.step() is False
