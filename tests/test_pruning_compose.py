"""Composable pruning: every pruner is a Score x Allocation x Schedule (sparseprop.pruning).

A combination no preset provides (LAMP scores, one global threshold, AC/DC phases) is
checked against masks worked out by hand; each named algorithm gives the same run as its
explicit composition; the fast sparse-form path still serves the magnitude presets; and
combinations that cannot run are refused with a message naming the problem."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseprop.pruning import (ACDCPruner, ACDCSchedule, CosineUpdateSchedule, ERKAllocation,
                                GlobalAllocation, GradientScore, GradualMagnitudePruner,
                                GradualSchedule, GraNetPruner, IterativeMagnitudePruner,
                                LAMPScore, MagnitudePruner, MagnitudeScore, OneShotSchedule,
                                Pruner, RandomPruner, RandomScore, RegrowingSchedule,
                                RigLPruner, SNIPPruner, SNIPScore, SynFlowPruner, SynFlowScore,
                                UniformAllocation)
from sparseprop.pruning._layers import Layer
from sparseprop.pruning.allocation import Allocation

from pruning_helpers import batches, mlp, train_step

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (conftest)

T, F = True, False


def _hand_model() -> nn.Sequential:
    """Two 2x2 layers with hand-set weights (no biases, so only the weights matter)."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    _set(model, [[1.0, -4.0], [2.0, 3.0]], [[5.0, 6.0], [7.0, 8.0]])
    return model


def _set(model, a, b) -> None:
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(a))
        model[1].weight.copy_(torch.tensor(b))


def _masks(pruner):
    return {name: mask.tolist() for name, mask in pruner.masks().items()}


ONES = [[T, T], [T, T]]


def _lamp_on_acdc(model, sparse_from):
    """GMP's pruner with LAMP scores, one global threshold, on an AC/DC schedule: no
    preset has this (GMP ramps, AC/DC ranks by magnitude)."""
    return GradualMagnitudePruner(
        model, None, sparsity=0.625, score=LAMPScore(), allocation=GlobalAllocation(),
        schedule=ACDCSchedule(total=10, warmup=2, sparse_length=3, dense_length=2,
                              final_sparse_length=3),
        sparse_from=sparse_from)


@pytest.mark.parametrize("sparse_from", [None, 0.5])
def test_lamp_scores_on_acdc_schedule_hand_masks(sparse_from):
    # Phases: dense at ticks 0-1, compressed 2-4, dense 5-6, compressed 7-9 (the last 3).
    # sparsity 0.625 keeps round(0.375 * 8) = 3 of the 8 weights, by LAMP score
    # w_u^2 / sum_{|w_v| >= |w_u|} w_v^2, one threshold over both layers.
    model = _hand_model()
    pruner = _lamp_on_acdc(model, sparse_from)
    assert _masks(pruner) == {"0": ONES, "1": ONES}
    pruner.step()  # t=1: still warming up
    assert _masks(pruner) == {"0": ONES, "1": ONES}
    # t=2: layer 0 |w| 1, 4, 2, 3 -> LAMP 1/30, 16/16, 4/29, 9/25;
    #      layer 1 |w| 5, 6, 7, 8 -> 25/174, 36/149, 49/113, 64/64.
    # Top 3: -4 (1.0), 8 (1.0), 7 (0.434); magnitude would have kept 8, 7, 6.
    assert pruner.step()
    hand_first = {"0": [[F, T], [F, F]], "1": [[F, F], [T, T]]}
    assert _masks(pruner) == hand_first
    assert pruner.sparsity() == 0.625
    assert pruner.layer_sparsity() == {"0": 0.75, "1": 0.5}
    for _ in (3, 4):  # the mask is fixed for the phase
        assert not pruner.step()
        assert _masks(pruner) == hand_first
    # t=5: decompressed; the weights pruned at t=2 come back at zero.
    assert pruner.step()
    assert _masks(pruner) == {"0": ONES, "1": ONES}
    assert all(isinstance(m, nn.Linear) for m in model)
    assert model[0].weight.tolist() == [[0.0, -4.0], [0.0, 0.0]]
    assert model[1].weight.tolist() == [[0.0, 0.0], [7.0, 8.0]]
    assert not pruner.step()  # t=6
    # "Training" during the dense phase: new weights by hand.
    _set(model, [[9.0, 1.0], [-2.0, 0.5]], [[1.0, 2.0], [3.0, 0.1]])
    # t=7: the final phase chooses among all weights again:
    #      layer 0 |w| 9, 1, 2, .5 -> 81/81, 1/86, 4/85, .25/86.25;
    #      layer 1 |w| 1, 2, 3, .1 -> 1/14, 4/13, 9/9, .01/14.01. Top 3: 9, 3, 2.
    assert pruner.step()
    hand_final = {"0": [[T, F], [F, F]], "1": [[F, T], [T, F]]}
    assert _masks(pruner) == hand_final
    for _ in (8, 9, 10, 11):  # compressed to the end
        assert not pruner.step()
        assert _masks(pruner) == hand_final
    steps = [h["step"] for h in pruner.history]
    assert steps == [2, 5, 7]  # the three mask changes (warm-up ticks log nothing)


def test_lamp_on_acdc_is_the_same_run_from_every_entry_point():
    """The same three parts give the same masks whichever class holds them."""
    schedule = ACDCSchedule(10, 2, 3, 2, 3)
    makers = {
        "gmp": lambda m: _lamp_on_acdc(m, None),
        "acdc": lambda m: ACDCPruner(m, None, sparsity=0.625, allocation="global",
                                     score=LAMPScore(), schedule=schedule, sparse_from=None),
        "magnitude": lambda m: MagnitudePruner(m, None, sparsity=0.625, allocation="global",
                                               score="lamp", schedule=schedule, sparse_from=None),
        "pruner": lambda m: Pruner(m, None, sparsity=0.625, score=LAMPScore(),
                                   allocation=GlobalAllocation(), schedule=schedule,
                                   sparse_from=None),
    }
    runs = {}
    for kind, make in makers.items():
        model = _hand_model()
        pruner = make(model)
        masks = []
        for t in range(1, 10):
            pruner.step()
            if t == 6:
                _set(model, [[9.0, 1.0], [-2.0, 0.5]], [[1.0, 2.0], [3.0, 0.1]])
            masks.append(_masks(pruner))
        runs[kind] = masks
    assert runs["gmp"][1] == {"0": [[F, T], [F, F]], "1": [[F, F], [T, T]]}
    for kind in makers:
        assert runs[kind] == runs["gmp"], kind


# --------------------------------------------------------------------------------------
# each preset is its explicit composition: same masks and weights over a training run
# --------------------------------------------------------------------------------------
_X = torch.randn(16, 6, generator=torch.Generator().manual_seed(5))
_Y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(6))

PRESETS = {
    "gmp": (lambda m, o, **k: GradualMagnitudePruner(m, o, sparsity=0.9, end_step=12, frequency=2, **k),
            lambda: (MagnitudeScore(), UniformAllocation(), GradualSchedule(0.0, 0.9, 0, 12, 2))),
    "gmp_lamp_global": (
        lambda m, o, **k: GradualMagnitudePruner(m, o, sparsity=0.8, end_step=10, start_step=2,
                                                 frequency=3, scope="global", score="lamp", **k),
        lambda: (LAMPScore(), GlobalAllocation(), GradualSchedule(0.0, 0.8, 2, 10, 3))),
    "magnitude_at_3": (
        lambda m, o, **k: MagnitudePruner(m, o, sparsity=0.7, allocation="global", min_keep=0.1,
                                          at=3, **k),
        lambda: (MagnitudeScore(), GlobalAllocation(0.1), OneShotSchedule(3))),
    "acdc": (lambda m, o, **k: ACDCPruner(m, o, sparsity=0.8, total=20, warmup=2, sparse_length=4,
                                          dense_length=3, **k),
             lambda: (MagnitudeScore(), UniformAllocation(), ACDCSchedule(20, 2, 4, 3, 4))),
    "rigl": (lambda m, o, **k: RigLPruner(m, o, sparsity=0.8, end_step=15, frequency=3, **k),
             lambda: (RandomScore(), ERKAllocation(), CosineUpdateSchedule(0.3, 3, 15))),
    "granet": (lambda m, o, **k: GraNetPruner(m, o, sparsity=0.9, end_step=12, frequency=3, **k),
               lambda: (MagnitudeScore(), GlobalAllocation(),
                        RegrowingSchedule(GradualSchedule(0.0, 0.9, 0, 12, 3),
                                          CosineUpdateSchedule(0.3, 3, 12)))),
    "random": (lambda m, o, **k: RandomPruner(m, o, sparsity=0.8, **k),
               lambda: (RandomScore(), ERKAllocation(), OneShotSchedule(0))),
    "snip": (lambda m, o, **k: SNIPPruner(m, o, sparsity=0.8, inputs=_X, targets=_Y, **k),
             lambda: (SNIPScore(_X, _Y), GlobalAllocation(), OneShotSchedule(0))),
    "synflow_1": (lambda m, o, **k: SynFlowPruner(m, o, sparsity=0.8, example_input=_X,
                                                  iterations=1, **k),
                  lambda: (SynFlowScore(_X), GlobalAllocation(), OneShotSchedule(0))),
}


def _run(make, sparse_from, steps=16):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = make(model, opt, sparse_from=sparse_from, seed=3)
    record = [pruner.masks()]
    for x, y in batches(steps):
        train_step(model, opt, x, y)
        pruner.step()
        record += [pruner.masks(), pruner.weights()]
    return record, pruner


@pytest.mark.parametrize("kind", list(PRESETS))
@pytest.mark.parametrize("sparse_from", [None, 0.5])
def test_preset_is_its_composition(kind, sparse_from):
    preset, parts = PRESETS[kind]
    score, allocation, schedule = parts()

    def composed(m, o, **k):
        return Pruner(m, o, sparsity=preset_pruner.target, score=score, allocation=allocation,
                      schedule=schedule, **k)

    expected, preset_pruner = _run(preset, sparse_from)
    assert type(preset_pruner.score) is type(score) and preset_pruner.allocation == allocation
    assert preset_pruner.schedule == schedule
    got, composed_pruner = _run(composed, sparse_from)
    assert len(got) == len(expected)
    for a, b in zip(expected, got):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[n], b[n]) for n in a)
    assert composed_pruner.kernels() == preset_pruner.kernels()
    assert [h["layers"] for h in composed_pruner.history] == \
        [h["layers"] for h in preset_pruner.history]
    assert preset_pruner.sparsity() > 0.5


def test_override_one_part_of_a_preset():
    """RigL starting from the largest weights instead of random ones: only the first mask
    changes rule; the drop-and-grow updates stay RigL's."""
    model = mlp()
    pruner = RigLPruner(model, None, sparsity=0.75, end_step=10, frequency=2,
                        allocation="uniform", score=MagnitudeScore(), sparse_from=None)
    assert isinstance(pruner.schedule, CosineUpdateSchedule) and pruner.needs_gradients
    for name, mask in pruner.masks().items():
        w = model.get_submodule(name).weight.detach().abs()
        k = int(mask.sum())
        assert k == round(0.25 * w.numel())
        assert torch.equal(mask, w >= w.flatten().topk(k).values.min())


def test_gradient_score_prunes_by_the_captured_gradient():
    """GradientScore as a pruning score (no preset uses it so): at tick 2 each layer keeps
    the positions with the largest |dL/dw| of step 2's backward pass."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # weights stay put: grads are comparable
    pruner = MagnitudePruner(model, opt, sparsity=0.5, score=GradientScore(),
                             schedule=OneShotSchedule(2), sparse_from=None)
    data = batches(2)
    train_step(model, opt, *data[0])
    pruner.step()
    train_step(model, opt, *data[1])
    grads = {n: model.get_submodule(n).weight.grad.abs().clone() for n in pruner.layers}
    assert pruner.step()
    for name, mask in pruner.masks().items():
        k = int(mask.sum())
        assert k == grads[name].numel() // 2
        assert torch.equal(mask, grads[name] >= grads[name].flatten().topk(k).values.min())


# --------------------------------------------------------------------------------------
# the fast paths stay on the presets
# --------------------------------------------------------------------------------------
def test_gmp_prunes_sparse_layers_inside_their_form(monkeypatch):
    calls = []
    original = Layer.keep_top_values
    monkeypatch.setattr(Layer, "keep_top_values",
                        lambda self, k, opt: calls.append(k) or original(self, k, opt))

    def no_dense_ranking(*args, **kwargs):
        raise AssertionError("a dense allocation ran on the uniform magnitude path")

    monkeypatch.setattr(Allocation, "masks", no_dense_ranking)
    _run(PRESETS["gmp"][0], 0.5)
    assert len(calls) > 4  # every update after the layers went sparse


# --------------------------------------------------------------------------------------
# combinations that cannot run
# --------------------------------------------------------------------------------------
def test_gradient_score_cannot_prune_at_creation():
    with pytest.raises(TypeError, match="GradientScore scores with the dense gradient of the step "
                                        "before an update, but RandomPruner's schedule prunes at tick 0"):
        RandomPruner(mlp(), sparsity=0.5, score=GradientScore())
    with pytest.raises(TypeError, match="SNIPPruner's schedule prunes at tick 0"):
        SNIPPruner(mlp(), sparsity=0.5, inputs=_X, targets=_Y, score=GradientScore())
    with pytest.raises(ValueError, match="unit must be 'step'"):
        MagnitudePruner(mlp(), sparsity=0.5, score=GradientScore(), schedule=OneShotSchedule(2),
                        unit="epoch")


def test_random_scores_refuse_a_global_threshold():
    for make in (lambda m: MagnitudePruner(m, sparsity=0.5, score=RandomScore(), allocation="global"),
                 lambda m: RandomPruner(m, sparsity=0.5, allocation=GlobalAllocation()),
                 lambda m: Pruner(m, sparsity=0.5, score=RandomScore(), allocation=GlobalAllocation(),
                                  schedule=OneShotSchedule())):
        with pytest.raises(ValueError, match="random scores need a per-layer allocation"):
            make(mlp())


def test_parts_of_the_wrong_kind():
    model = mlp()
    with pytest.raises(TypeError, match=r"score must be a Score .* got int"):
        MagnitudePruner(model, sparsity=0.5, score=3)
    with pytest.raises(TypeError, match=r"allocation must be an Allocation .* got GradientScore"):
        MagnitudePruner(model, sparsity=0.5, allocation=GradientScore())
    with pytest.raises(TypeError, match=r"schedule must be a Schedule .* got str"):
        MagnitudePruner(model, sparsity=0.5, schedule="gradual")
    with pytest.raises(TypeError, match="Pruner needs score=, allocation= and schedule= together"):
        Pruner(model, sparsity=0.5, score=LAMPScore())
    with pytest.raises(ValueError, match=r"min_keep goes with a named allocation"):
        MagnitudePruner(model, sparsity=0.5, allocation=GlobalAllocation(), min_keep=0.1)
    with pytest.raises(TypeError, match="regrow must be a CosineUpdateSchedule"):
        RegrowingSchedule(OneShotSchedule(), OneShotSchedule())


def test_schedule_keywords_and_schedule_together_are_refused():
    model = mlp()
    acdc = ACDCSchedule(10, 2, 3, 2, 3)
    with pytest.raises(ValueError, match="MagnitudePruner: give at= or schedule=, not both"):
        MagnitudePruner(model, sparsity=0.5, at=3, schedule=acdc)
    with pytest.raises(ValueError, match="GradualMagnitudePruner: give end_step=, frequency= or schedule="):
        GradualMagnitudePruner(model, sparsity=0.5, end_step=10, frequency=2, schedule=acdc)
    with pytest.raises(ValueError, match="give scope= or allocation=, not both"):
        GradualMagnitudePruner(model, sparsity=0.5, end_step=10, scope="global",
                               allocation="uniform")
    with pytest.raises(TypeError, match="GradualMagnitudePruner needs end_step= \\(or a schedule=\\)"):
        GradualMagnitudePruner(model, sparsity=0.5)
    with pytest.raises(ValueError, match="leave_enabled=False lifts the masks after the schedule's "
                                         "end_step, and ACDCSchedule has none"):
        GradualMagnitudePruner(model, sparsity=0.5, leave_enabled=False, schedule=acdc)
    with pytest.raises(ValueError, match="ACDCPruner: give total=, warmup= or schedule="):
        ACDCPruner(model, sparsity=0.5, total=10, warmup=1, schedule=acdc)
    with pytest.raises(TypeError, match="ACDCPruner needs total=, warmup="):
        ACDCPruner(model, sparsity=0.5, sparse_length=2, dense_length=2)
    with pytest.raises(ValueError, match="RigLPruner: give alpha= or schedule="):
        RigLPruner(model, sparsity=0.5, alpha=0.5, schedule=CosineUpdateSchedule(0.3, 2, 10))
    with pytest.raises(ValueError, match="IterativeMagnitudePruner: give rounds= or schedule="):
        IterativeMagnitudePruner(model, sparsity=0.5, rounds=2, schedule=acdc)


def test_schedule_target_must_agree_with_sparsity():
    model = mlp()
    ramp = GradualSchedule(0.0, 0.8, 0, 10, 2)
    with pytest.raises(ValueError, match=r"sparsity=0\.5 but the schedule's final_sparsity is 0\.8"):
        GradualMagnitudePruner(model, sparsity=0.5, schedule=ramp)
    pruner = GradualMagnitudePruner(mlp(), sparsity=None, schedule=ramp, sparse_from=None)
    assert pruner.target == 0.8 and pruner.schedule is ramp


def test_iterative_with_another_schedule_rewinds_after_each_update():
    """IMP's rewinding on a gradual ramp: each of the ramp's updates restores the saved
    weights (survivors only)."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    start = {n: model.get_submodule(n).weight.detach().clone() for n in ("0", "2", "4")}
    pruner = IterativeMagnitudePruner(model, opt, sparsity=0.6, allocation="uniform",
                                      schedule=GradualSchedule(0.0, 0.6, 2, 6, 2),
                                      sparse_from=None)
    for t, (x, y) in enumerate(batches(6), start=1):
        train_step(model, opt, x, y)
        pruner.step()
        if t in (2, 4, 6):  # an update tick: rewound to the start, pruned weights zero
            for name, mask in pruner.masks().items():
                assert torch.equal(model.get_submodule(name).weight.detach(), start[name] * mask)
    assert abs(pruner.layer_sparsity()["0"] - 0.6) < 0.02


def test_parts_compare_equal_to_their_old_names():
    """``pruner.allocation`` / ``pruner.score`` were strings; the objects still read so."""
    pruner = MagnitudePruner(mlp(), sparsity=0.5, allocation="global", min_keep=0.1,
                             score="lamp", sparse_from=None)
    assert pruner.allocation == "global" and pruner.allocation != "uniform"
    assert pruner.allocation == GlobalAllocation(0.1) and pruner.allocation != GlobalAllocation()
    assert pruner.score == "lamp" and pruner.score == LAMPScore() and pruner.score != "magnitude"
    assert isinstance(pruner.schedule, OneShotSchedule) and pruner.min_keep == 0.1
    assert RandomPruner(mlp(), sparsity=0.5, sparse_from=None).allocation == "erk"
