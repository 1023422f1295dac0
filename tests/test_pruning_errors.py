"""Every bad argument to the pruning package raises a clear exception that names the
problem (type and message checked), and a rejected call leaves the model as it was."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseprop import SparseLinear
from sparseprop.pruning import (ACDCPruner, ACDCSchedule, CosineUpdateSchedule,
                                GradualMagnitudePruner, GradualSchedule, GraNetPruner,
                                IterativeMagnitudePruner, IterativeSchedule, MagnitudePruner,
                                RandomPruner, RigLPruner, SNIPPruner, SynFlowPruner, er_densities,
                                global_masks, uniform_counts)
from sparseprop.pruning.allocation import allocate


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (conftest)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def opt_for(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert all(type(m) is not SparseLinear for m in model.modules())


# every pruner, built with valid arguments except for what a test overrides
def _x():
    return torch.randn(4, 6)


PRUNERS = {
    "magnitude": lambda m, o, **kw: MagnitudePruner(m, o, **{"sparsity": 0.5, **kw}),
    "gradual": lambda m, o, **kw: GradualMagnitudePruner(m, o, **{"sparsity": 0.5,
                                                                  "end_step": 10, **kw}),
    "iterative": lambda m, o, **kw: IterativeMagnitudePruner(m, o, **{"sparsity": 0.5,
                                                                      "rounds": 2,
                                                                      "round_length": 3, **kw}),
    "random": lambda m, o, **kw: RandomPruner(m, o, **{"sparsity": 0.5, **kw}),
    "snip": lambda m, o, **kw: SNIPPruner(m, o, **{"sparsity": 0.5, "inputs": _x(),
                                                   "targets": torch.tensor([0, 1, 2, 0]), **kw}),
    "synflow": lambda m, o, **kw: SynFlowPruner(m, o, **{"sparsity": 0.5, "example_input": _x(),
                                                         "iterations": 2, **kw}),
    "acdc": lambda m, o, **kw: ACDCPruner(m, o, **{"sparsity": 0.5, "total": 10, "warmup": 2,
                                                   "sparse_length": 2, "dense_length": 2, **kw}),
    "rigl": lambda m, o, **kw: RigLPruner(m, o, **{"sparsity": 0.5, "end_step": 10, **kw}),
    "granet": lambda m, o, **kw: GraNetPruner(m, o, **{"sparsity": 0.5, "end_step": 10,
                                                       **kw}),
}
SPARSITY_ARG = {kind: "sparsity" for kind in PRUNERS}  # one name for the target everywhere


@pytest.mark.parametrize("kind", list(PRUNERS))
def test_every_pruner_builds_with_valid_arguments(kind):
    model = mlp()
    pruner = PRUNERS[kind](model, opt_for(model))
    assert list(pruner.layers) == ["0", "2"]


# --------------------------------------------------------------------------------------
# sparsity values
# --------------------------------------------------------------------------------------
BAD_SPARSITY = [
    (1.0, ValueError, r"must be in \[0, 1\), got 1\.0"),
    (1.5, ValueError, r"must be in \[0, 1\]"),
    (-0.1, ValueError, r"must be in \[0, 1\]"),
    (float("nan"), ValueError, r"must be in \[0, 1\].*nan"),
    (float("inf"), ValueError, r"must be in \[0, 1\]"),
    ("half", TypeError, r"must be a number in \[0, 1\], got 'half'"),
    (None, TypeError, r"must be a number"),
]


@pytest.mark.parametrize("kind", list(PRUNERS))
@pytest.mark.parametrize("value, exc, match", BAD_SPARSITY,
                         ids=["one", "above", "negative", "nan", "inf", "string", "none"])
def test_bad_target_sparsity(kind, value, exc, match):
    model = mlp()
    before = snapshot(model)
    arg = SPARSITY_ARG[kind]
    with pytest.raises(exc, match=arg + " " + match):
        PRUNERS[kind](model, opt_for(model), **{arg: value})
    assert_unchanged(model, before)


@pytest.mark.parametrize("value, exc, match", BAD_SPARSITY,
                         ids=["one", "above", "negative", "nan", "inf", "string", "none"])
def test_bad_initial_sparsity(value, exc, match):
    model = mlp()
    with pytest.raises(exc, match="initial_sparsity " + match):
        GradualMagnitudePruner(model, sparsity=0.9, end_step=10, initial_sparsity=value)


@pytest.mark.parametrize("fn", [
    lambda s: uniform_counts({"a": 10}, s),
    lambda s: global_masks({"a": torch.rand(10)}, s),
    lambda s: er_densities({"a": (4, 4, 1, 1)}, s),
    lambda s: cubic_schedule_sparsity(s),
], ids=["uniform_counts", "global_masks", "er_densities", "schedule"])
def test_allocation_functions_reject_bad_sparsity(fn):
    with pytest.raises(ValueError, match=r"must be in \[0, 1"):
        fn(-0.5)
    with pytest.raises(TypeError, match="must be a number"):
        fn("lots")


@pytest.mark.parametrize("kind", ["magnitude", "gradual", "rigl"])
def test_numeric_string_sparsity_is_rejected(kind):
    model = mlp()
    with pytest.raises(TypeError, match="must be a number"):
        PRUNERS[kind](model, opt_for(model), **{SPARSITY_ARG[kind]: "0.9"})


def cubic_schedule_sparsity(s):
    return GradualSchedule(0.0, s, 0, 10, 1)


def test_sparse_from_out_of_range():
    model = mlp()
    with pytest.raises(ValueError, match=r"sparse_from must be in \[0, 1\], got 1\.5"):
        MagnitudePruner(model, sparsity=0.5, sparse_from=1.5)
    with pytest.raises(ValueError, match=r"sparse_from must be in \[0, 1\]"):
        MagnitudePruner(model, sparsity=0.5, sparse_from=-0.2)


def test_min_keep_out_of_range():
    model = mlp()
    with pytest.raises(ValueError, match=r"min_keep must be in \[0, 1\], got 1\.5"):
        MagnitudePruner(model, sparsity=0.5, allocation="global", min_keep=1.5)
    with pytest.raises(ValueError, match=r"min_keep must be in \[0, 1\]"):
        GradualMagnitudePruner(model, sparsity=0.5, end_step=4, scope="global",
                               min_keep=-0.1)


# --------------------------------------------------------------------------------------
# schedules
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("start, end", [(10, 5), (10, 10), (0, 0)])
def test_schedule_end_not_after_start(start, end):
    with pytest.raises(ValueError, match=rf"end_step \({end}\) must come after start_step \({start}\)"):
        GradualSchedule(0.0, 0.9, start, end, 1)
    model = mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match="must come after start_step"):
        GradualMagnitudePruner(model, opt_for(model), sparsity=0.9, start_step=start,
                               end_step=end)
    with pytest.raises(ValueError, match="must come after start_step"):
        GraNetPruner(model, opt_for(model), sparsity=0.9, start_step=start, end_step=end)
    assert_unchanged(model, before)


@pytest.mark.parametrize("value", [0, -1, 1.0, 2.5, True, "3", None])
def test_frequency_must_be_positive_int(value):
    with pytest.raises(ValueError, match=rf"frequency must be an int >= 1, got {value!r}"):
        GradualSchedule(0.0, 0.9, 0, 10, value)
    with pytest.raises(ValueError, match=r"frequency must be an int >= 1"):
        CosineUpdateSchedule(0.3, value, 10)
    model = mlp()
    with pytest.raises(ValueError, match=r"frequency must be an int >= 1"):
        GradualMagnitudePruner(model, sparsity=0.9, end_step=10, frequency=value)
    with pytest.raises(ValueError, match=r"frequency must be an int >= 1"):
        RigLPruner(model, sparsity=0.9, end_step=10, frequency=value)


@pytest.mark.parametrize("name, kwargs", [
    ("start_step", dict(start_step=-1)),
    ("start_step", dict(start_step=1.5)),
    ("end_step", dict(end_step=10.0)),
    ("end_step", dict(end_step=-3)),
])
def test_schedule_ticks_must_be_ints(name, kwargs):
    args = dict(initial_sparsity=0.0, final_sparsity=0.9, start_step=0, end_step=10, frequency=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=rf"{name} must be an int >= 0"):
        GradualSchedule(**args)


def test_initial_exceeds_final():
    with pytest.raises(ValueError, match=r"initial_sparsity \(0\.8\) must not exceed final_sparsity \(0\.5\)"):
        GradualSchedule(0.8, 0.5, 0, 10, 1)
    model = mlp()
    with pytest.raises(ValueError, match="must not exceed final_sparsity"):
        GradualMagnitudePruner(model, sparsity=0.5, initial_sparsity=0.8, end_step=10)
    with pytest.raises(ValueError, match="must not exceed final_sparsity"):
        GraNetPruner(model, sparsity=0.5, initial_sparsity=0.8, end_step=10)


def test_acdc_schedule_errors():
    with pytest.raises(ValueError, match=r"warmup \(8\) \+ final_sparse_length \(5\) exceed total \(10\)"):
        ACDCSchedule(10, 8, 2, 2, 5)
    with pytest.raises(ValueError, match="total must be an int >= 1, got 0"):
        ACDCSchedule(0, 0, 1, 1, 1)
    with pytest.raises(ValueError, match="sparse_length must be an int >= 1, got 0"):
        ACDCSchedule(10, 0, 0, 1, 1)
    with pytest.raises(ValueError, match="dense_length must be an int >= 1, got 0"):
        ACDCSchedule(10, 0, 1, 0, 1)
    with pytest.raises(ValueError, match="warmup must be an int >= 0, got -1"):
        ACDCSchedule(10, -1, 1, 1, 1)
    model = mlp()
    with pytest.raises(ValueError, match="exceed total"):
        ACDCPruner(model, sparsity=0.5, total=5, warmup=4, sparse_length=2, dense_length=1)


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5, float("nan")])
def test_cosine_alpha_out_of_range(alpha):
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\]"):
        CosineUpdateSchedule(alpha, 1, 10)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\]"):
        RigLPruner(mlp(), sparsity=0.5, end_step=10, alpha=alpha)


def test_iterative_errors():
    with pytest.raises(ValueError, match="rounds must be an int >= 1, got 0"):
        IterativeSchedule(0.5, 0, 3)
    with pytest.raises(ValueError, match="round_length must be an int >= 1, got 0"):
        IterativeSchedule(0.5, 2, 0)
    model = mlp()
    for bad in (3, 5, -1, 1.0, True):
        with pytest.raises(ValueError, match=r"rewind_step must be an int in \[0, round_length\)"):
            IterativeMagnitudePruner(model, sparsity=0.5, rounds=2, round_length=3,
                                     rewind_step=bad)
    pruner = IterativeMagnitudePruner(model, sparsity=0.5, rounds=2, round_length=3,
                                      rewind_step=2)
    with pytest.raises(RuntimeError, match="nothing to rewind to yet"):
        pruner.rewind()


def test_one_shot_at_must_be_int():
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"at must be an int >= 0"):
            MagnitudePruner(mlp(), sparsity=0.5, at=bad)


def test_synflow_argument_errors():
    with pytest.raises(ValueError, match="iterations must be an int >= 1, got 0"):
        SynFlowPruner(mlp(), sparsity=0.5, example_input=_x(), iterations=0)
    with pytest.raises(TypeError, match="example_input must be a batched tensor"):
        SynFlowPruner(mlp(), sparsity=0.5, example_input=[1.0] * 6)
    with pytest.raises(TypeError, match="example_input must be a batched tensor"):
        SynFlowPruner(mlp(), sparsity=0.5, example_input=torch.tensor(1.0))


# --------------------------------------------------------------------------------------
# layer selection
# --------------------------------------------------------------------------------------
def test_no_prunable_layers():
    model = nn.Sequential(nn.ReLU(), nn.BatchNorm1d(4), nn.Flatten())
    for kind in ("magnitude", "rigl", "random"):
        with pytest.raises(ValueError, match=r"no prunable layers \(nn\.Linear, nn\.Conv2d"):
            PRUNERS[kind](model, None)


def test_selection_that_leaves_nothing():
    with pytest.raises(ValueError, match="no prunable layers"):
        MagnitudePruner(mlp(), sparsity=0.5, exclude=["0", "2"])
    with pytest.raises(ValueError, match="no prunable layers"):
        MagnitudePruner(mlp(), sparsity=0.5, layers=r"fc.*")
    with pytest.raises(ValueError, match="no prunable layers"):
        MagnitudePruner(mlp(), sparsity=0.5, layers=[])


@pytest.mark.parametrize("arg", ["layers", "exclude"])
def test_unknown_layer_name(arg):
    model = mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match=rf"{arg}: no module named 'fc9' in the model"):
        MagnitudePruner(model, sparsity=0.5, **{arg: ["0", "fc9"]})
    with pytest.raises(ValueError, match=rf"{arg}: no module named '5'"):
        RigLPruner(model, sparsity=0.5, end_step=10, **{arg: ["5.weight"]})
    assert_unchanged(model, before)


@pytest.mark.parametrize("arg", ["layers", "exclude"])
def test_layer_name_not_prunable(arg):
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 3))
    with pytest.raises(ValueError, match=rf"{arg}: '1' is a ReLU, not a prunable layer"):
        MagnitudePruner(model, sparsity=0.5, **{arg: ["1"]})
    with pytest.raises(ValueError, match=rf"{arg}: '2' is a BatchNorm1d, not a prunable layer"):
        MagnitudePruner(model, sparsity=0.5, **{arg: ["0", "2"]})
    with pytest.raises(ValueError, match=rf"{arg}: '' is a Sequential, not a prunable layer"):
        MagnitudePruner(model, sparsity=0.5, **{arg: [""]})


@pytest.mark.parametrize("module", [nn.Linear(4, 4), nn.Conv2d(2, 2, 3)])
def test_model_itself_is_a_layer(module):
    before = snapshot(module)
    with pytest.raises(ValueError, match=r"the model itself is a prunable layer; wrap it in nn\.Sequential"):
        MagnitudePruner(module, sparsity=0.5)
    assert_unchanged(module, before)


def test_model_not_a_module():
    with pytest.raises(TypeError, match="model must be an nn.Module, got dict"):
        MagnitudePruner({"w": torch.zeros(3)}, sparsity=0.5)


# --------------------------------------------------------------------------------------
# names of allocations, scores, scopes, units
# --------------------------------------------------------------------------------------
def test_unknown_allocation():
    model = mlp()
    before = snapshot(model)
    msg = r"allocation must be one of \('uniform', 'global', 'er', 'erk'\), got 'best'"
    for kind in ("magnitude", "iterative", "random", "snip", "acdc", "rigl", "granet"):
        with pytest.raises(ValueError, match=msg):
            PRUNERS[kind](model, opt_for(model), allocation="best")
    with pytest.raises(ValueError, match=msg):
        allocate({"a": torch.rand(4)}, 0.5, "best")
    assert_unchanged(model, before)


def test_allocation_not_supported_by_algorithm():
    model = mlp()
    with pytest.raises(ValueError, match="random scores need a per-layer allocation"):
        RandomPruner(model, sparsity=0.5, allocation="global")
    with pytest.raises(ValueError, match="allocation must be 'global' or 'uniform'"):
        GraNetPruner(model, sparsity=0.5, end_step=10, allocation="erk")
    with pytest.raises(ValueError, match=r"the 'erk' allocation needs the layers' kernel shapes"):
        allocate({"a": torch.rand(4)}, 0.5, "erk")
    with pytest.raises(ValueError, match=r"kind must be 'er' or 'erk', got 'uniform'"):
        er_densities({"a": (4, 4, 1, 1)}, 0.5, "uniform")


def test_unknown_score_and_scope():
    model = mlp()
    with pytest.raises(ValueError, match=r"score must be one of \('magnitude', 'lamp'\), got 'snip'"):
        MagnitudePruner(model, sparsity=0.5, score="snip")
    with pytest.raises(ValueError, match=r"score must be one of"):
        GradualMagnitudePruner(model, sparsity=0.5, end_step=4, score="taylor")
    with pytest.raises(ValueError, match=r"scope must be one of \('layerwise', 'global'\), got 'uniform'"):
        GradualMagnitudePruner(model, sparsity=0.5, end_step=4, scope="uniform")


@pytest.mark.parametrize("allocation", ["uniform", "er", "erk"])
def test_min_keep_needs_global(allocation):
    model = mlp()
    with pytest.raises(ValueError, match="min_keep applies to the 'global' allocation only"):
        MagnitudePruner(model, sparsity=0.5, allocation=allocation, min_keep=0.1)
    with pytest.raises(ValueError, match="min_keep applies to the 'global' allocation only"):
        GradualMagnitudePruner(model, sparsity=0.5, end_step=4, scope="layerwise",
                               min_keep=0.1)


def test_min_keep_over_budget_in_pruner():
    model = mlp()  # 48 + 24 weights: floor 0.6 keeps 29 + 15 = 44 > round(0.5 * 72) = 36
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"min_keep=0\.6 keeps 44 weights, more than the 36"):
        MagnitudePruner(model, sparsity=0.5, allocation="global", min_keep=0.6)
    assert_unchanged(model, before)


def test_unknown_unit():
    with pytest.raises(ValueError, match=r"unit must be 'step' or 'epoch', got 'batch'"):
        MagnitudePruner(mlp(), sparsity=0.5, unit="batch")


@pytest.mark.parametrize("kind, algo", [("rigl", "RigL"), ("granet", "GraNet")])
def test_gradient_pruners_need_step_unit(kind, algo):
    model = mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match=rf"{algo} .*unit must be 'step'"):
        PRUNERS[kind](model, opt_for(model), unit="epoch")
    assert_unchanged(model, before)


# --------------------------------------------------------------------------------------
# optimizer argument
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [object(), "sgd", 0.1, [torch.zeros(2)],
                                 {"lr": 0.1}])
def test_optimizer_not_an_optimizer(bad):
    model = mlp()
    with pytest.raises(TypeError, match=r"optimizer must be a torch\.optim\.Optimizer or None, got "
                                        + type(bad).__name__):
        MagnitudePruner(model, bad, sparsity=0.5)
    with pytest.raises(TypeError, match=r"optimizer must be a torch\.optim\.Optimizer"):
        RigLPruner(model, bad, sparsity=0.5, end_step=10)


def test_optimizer_of_another_model():
    model, other = mlp(), mlp()
    with pytest.raises(ValueError, match="the optimizer does not train this layer's weight"):
        MagnitudePruner(model, opt_for(other), sparsity=0.9, sparse_from=0.5)


# --------------------------------------------------------------------------------------
# apply_masks / load_state_dict
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(8, 5), (6, 8), (48,), (1, 8, 6)])
def test_apply_masks_wrong_shape(shape):
    model = mlp()
    pruner = MagnitudePruner(model, opt_for(model), sparsity=0.5, sparse_from=None)
    masks_before = pruner.masks()
    state = snapshot(model)
    good = torch.ones(3, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"mask for '0' has shape " + re_tuple(shape)
                       + r", the layer's weight is \(8, 6\)"):
        pruner.apply_masks({"2": good, "0": torch.ones(shape, dtype=torch.bool)})
    # nothing was applied, not even the good mask of '2'
    assert all(torch.equal(m, masks_before[n]) for n, m in pruner.masks().items())
    assert_unchanged(model, state)


def re_tuple(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


def test_apply_masks_unknown_layer():
    model = mlp()
    pruner = MagnitudePruner(model, sparsity=0.5, sparse_from=None)
    with pytest.raises(KeyError, match="'1'"):
        pruner.apply_masks({"1": torch.ones(8, 6, dtype=torch.bool)})


def _pruner_state(model):
    return MagnitudePruner(model, sparsity=0.8).state_dict()


def test_load_state_dict_other_layer_names():
    state = _pruner_state(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3), nn.ReLU(),
                                        nn.Linear(3, 3)))
    model = mlp()
    pruner = MagnitudePruner(model, opt_for(model), sparsity=0.5, sparse_from=None)
    before, masks = snapshot(model), pruner.masks()
    with pytest.raises(ValueError, match=r"the saved pruner has layers \['0', '2', '4'\], this one \['0', '2'\]"):
        pruner.load_state_dict(state)
    assert_unchanged(model, before)
    assert all(torch.equal(m, masks[n]) for n, m in pruner.masks().items())
    assert pruner.t == 0


def test_load_state_dict_other_shapes():
    state = _pruner_state(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)))
    model = mlp()
    pruner = MagnitudePruner(model, opt_for(model), sparsity=0.5, sparse_from=None)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"saved mask of '2' has shape \(4, 8\), the layer's weight is \(3, 8\)"):
        pruner.load_state_dict(state)
    assert_unchanged(model, before)


@pytest.mark.parametrize("state", [{}, {"t": 3}, {"layers": {}}, None, [1, 2]])
def test_load_state_dict_not_a_state(state):
    model = mlp()
    pruner = MagnitudePruner(model, sparsity=0.5, sparse_from=None)
    with pytest.raises(ValueError, match="not a pruner state_dict"):
        pruner.load_state_dict(state)


def test_load_state_dict_of_other_model_names_subset():
    # same number of layers, other names
    torch.manual_seed(0)
    other = nn.Sequential()
    other.add_module("fc1", nn.Linear(6, 8))
    other.add_module("act", nn.ReLU())
    other.add_module("fc2", nn.Linear(8, 3))
    state = _pruner_state(other)
    pruner = MagnitudePruner(mlp(), sparsity=0.5)
    with pytest.raises(ValueError, match=r"the saved pruner has layers \['fc1', 'fc2'\]"):
        pruner.load_state_dict(state)


# --------------------------------------------------------------------------------------
# RigL without the gradient it needs
# --------------------------------------------------------------------------------------
def test_rigl_step_without_backward():
    model = mlp()
    opt = opt_for(model)
    pruner = RigLPruner(model, opt, sparsity=0.5, end_step=10, frequency=2)
    assert pruner.step() is False  # t = 1: not an update step, no gradient needed
    masks = pruner.masks()
    with pytest.raises(RuntimeError, match=r"RigL needs the dense gradient of the step before an update: "
                                           r"call pruner\.step\(\) after optimizer\.step\(\)"):
        pruner.step()  # t = 2: update, but no backward ran since t = 1
    assert all(torch.equal(m, masks[n]) for n, m in pruner.masks().items())


def test_rigl_forward_without_backward_is_not_enough():
    model = mlp()
    pruner = RigLPruner(model, opt_for(model), sparsity=0.5, end_step=10, frequency=1)
    model(torch.randn(4, 6))  # forward only
    with pytest.raises(RuntimeError, match="RigL needs the dense gradient"):
        pruner.step()


def test_granet_step_without_backward():
    model = mlp()
    pruner = GraNetPruner(model, opt_for(model), sparsity=0.5, end_step=10, frequency=1)
    with pytest.raises(RuntimeError, match="GraNet needs the dense gradient"):
        pruner.step()
    # with a backward pass, the next update goes through
    model2 = mlp()
    opt = opt_for(model2)
    pruner = GraNetPruner(model2, opt, sparsity=0.5, end_step=10, frequency=1)
    opt.zero_grad()
    F.cross_entropy(model2(torch.randn(4, 6)), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    assert pruner.step() is True


# --------------------------------------------------------------------------------------
# one keyword for the target: sparsity=, with final_sparsity= as a deprecated alias
# --------------------------------------------------------------------------------------
RENAMED = {
    "gradual": (GradualMagnitudePruner, dict(end_step=10)),
    "iterative": (IterativeMagnitudePruner, dict(rounds=2, round_length=3)),
    "granet": (GraNetPruner, dict(end_step=10)),
}


@pytest.mark.parametrize("kind", list(RENAMED))
def test_final_sparsity_is_a_deprecated_alias_of_sparsity(kind):
    cls, extra = RENAMED[kind]
    new_model, old_model = mlp(), mlp()
    old_model.load_state_dict(new_model.state_dict())
    new = cls(new_model, opt_for(new_model), sparsity=0.75, **extra)
    with pytest.warns(DeprecationWarning, match="final_sparsity= is deprecated, use sparsity="):
        old = cls(old_model, opt_for(old_model), final_sparsity=0.75, **extra)
    schedule = getattr(new, "schedule", None) or new.prune_schedule
    assert schedule == (getattr(old, "schedule", None) or old.prune_schedule)
    assert schedule.final_sparsity == 0.75
    new_masks, old_masks = new.masks(), old.masks()
    assert all(torch.equal(new_masks[n], old_masks[n]) for n in new_masks)


@pytest.mark.parametrize("kind", list(RENAMED))
def test_sparsity_and_final_sparsity_together_or_neither_raise(kind):
    cls, extra = RENAMED[kind]
    model = mlp()
    before = snapshot(model)
    with pytest.raises(TypeError, match="give sparsity= only"):
        cls(model, opt_for(model), sparsity=0.5, final_sparsity=0.5, **extra)
    with pytest.raises(TypeError, match="sparsity must be a number, got None"):
        cls(model, opt_for(model), **extra)
    assert_unchanged(model, before)
