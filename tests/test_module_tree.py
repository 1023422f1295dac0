"""sparseprop.module_tree, the one home of model surgery: finding layers under every name,
the one name selector, the one convertibility rule, the one swap; and its callers
(sparsify, densify, the pruners, the benchmarks' sparsify_convs) agreeing on them."""
from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

import sparseprop
from sparseprop import SparseConv2d, SparseLinear, models, module_tree, pruning
from sparseprop.benchmarks import resnet_models
from sparseprop.optim_state import swap_parameter


class ScaledLinear(nn.Linear):
    """A subclass whose forward is not nn.Linear's: converting it would lose the scaling."""

    def forward(self, x):
        return 2 * super().forward(x)


class NamedLinear(nn.Linear):
    """A subclass that keeps nn.Linear's forward: convertible."""


def shared_model():
    shared = nn.Linear(4, 4)
    return nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(4, 2))


def test_occurrences_list_every_name_of_a_module():
    model = shared_model()
    occ = module_tree.module_occurrences(model)
    module, names = occ[id(model[0])]
    assert module is model[0] and names == ["0", "2"]
    assert occ[id(model)][1] == [""]


@pytest.mark.parametrize("names, expected", [
    (None, None),
    (r"\d", {"0", "3"}),                 # regex: whole names, only accepted modules
    (re.compile(r"[23]"), {"0", "3"}),   # "2" is the shared module's second name
    (["3.weight"], {"3"}),
    (["0", "2"], {"0"}),
])
def test_select_modules(names, expected):
    model = shared_model()
    occ = module_tree.module_occurrences(model)
    chosen = module_tree.select_modules(names, occ, lambda m: isinstance(m, nn.Linear), "names",
                                        "a linear layer")
    if expected is None:
        assert chosen is None
    else:
        assert chosen == {id(model.get_submodule(n)) for n in expected}


def test_select_modules_errors_name_the_argument():
    occ = module_tree.module_occurrences(shared_model())
    accept = lambda m: isinstance(m, nn.Linear)  # noqa: E731
    with pytest.raises(ValueError, match="layers: no module named '9' in the model"):
        module_tree.select_modules(["9"], occ, accept, "layers", "a linear layer")
    with pytest.raises(ValueError, match="layers: '1' is a ReLU, not a linear layer"):
        module_tree.select_modules(["1"], occ, accept, "layers", "a linear layer")


def test_conversion_blocker_is_the_one_rule():
    tied = nn.Linear(3, 3)
    other = nn.Linear(3, 3)
    other.weight = tied.weight
    model = nn.Sequential(nn.Linear(3, 3), ScaledLinear(3, 3), NamedLinear(3, 3),
                          nn.Linear(3, 3, device="meta"), tied, other, nn.Conv2d(1, 1, 1), nn.ReLU())
    users = module_tree.shared_parameter_users(model)
    reasons = {name: module_tree.conversion_blocker(m, m.weight, users) if hasattr(m, "weight")
               else module_tree.conversion_blocker(m, torch.empty(0), users)
               for name, m in model.named_children()}
    assert reasons["0"] is None and reasons["2"] is None and reasons["6"] is None
    assert reasons["1"] == "ScaledLinear overrides forward"
    assert reasons["3"].startswith("torch.float32 weights on meta")
    assert reasons["4"] == reasons["5"] == "weight shared with another module"
    assert reasons["7"] == "ReLU has no sparse form"


def test_sparsify_and_the_pruners_agree_on_convertibility():
    def build():
        torch.manual_seed(0)
        tied, other = nn.Linear(6, 6), nn.Linear(6, 6)
        other.weight = tied.weight
        return nn.Sequential(nn.Linear(6, 6), ScaledLinear(6, 6), NamedLinear(6, 6), tied, other)
    report = sparseprop.sparsify(build(), 0.9, return_report=True)
    by_sparsify = {r["layer"] for r in report if r["decision"] == "sparse"}
    model = build()
    pruning.MagnitudePruner(model, sparsity=0.9, sparse_from=0.5)
    by_pruner = {n for n, m in model.named_children() if isinstance(m, SparseLinear)}
    assert by_sparsify == by_pruner == {"0", "2"}


def test_replace_all_swaps_every_name_and_the_root():
    model = shared_model()
    new = nn.Linear(4, 4)
    assert module_tree.replace_all(model, ["0", "2"], new) is model
    assert model[0] is new and model[2] is new
    assert module_tree.replace_all(model, [""], new) is new


@pytest.mark.parametrize("training, frozen", [(True, False), (False, True)])
def test_twins_keep_mode_and_requires_grad(training, frozen):
    dense = nn.Conv2d(3, 4, 3)
    dense.train(training)
    dense.weight.requires_grad_(not frozen)
    sparse = module_tree.sparse_twin(dense, sparsity=0.75)
    assert isinstance(sparse, SparseConv2d) and sparse.training == training
    assert sparse.values.requires_grad == (not frozen) and sparse.bias.requires_grad
    back = module_tree.dense_twin(sparse)
    assert type(back) is nn.Conv2d and back.training == training
    assert back.weight.requires_grad == (not frozen)
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(back(x), sparse(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="ReLU has no sparse form"):
        module_tree.sparse_twin(nn.ReLU())


def test_sparsify_convs_swaps_every_name_with_exact_counts():
    conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), conv, nn.ReLU(), conv)
    with torch.no_grad():
        conv.weight[0] = 0.0  # zeros do not lower the count: from_dense picks exactly
    resnet_models.sparsify_convs(model, 0.5, skip=("0",))
    assert isinstance(model[0], nn.Conv2d)
    assert model[1] is model[3] and isinstance(model[1], SparseConv2d)
    assert model[1].nnz == round(0.5 * conv.weight.numel())
    with pytest.raises(ValueError, match="cannot replace the model itself"):
        resnet_models.sparsify_convs(nn.Conv2d(2, 2, 1), 0.5, skip=())


def test_models_densify_is_deprecated_and_is_sparseprop_densify():
    model = nn.Sequential(SparseLinear(5, 4, sparsity=0.5), nn.ReLU())
    x = torch.randn(3, 5)
    expected = model(x).detach()
    with pytest.warns(DeprecationWarning, match="use sparseprop.densify"):
        out = models.densify(model)
    assert out is model and type(model[0]) is nn.Linear
    torch.testing.assert_close(model(x), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ValueError, match="cannot replace the model itself"):
            models.densify(SparseLinear(3, 3))


def test_swap_parameter_moves_and_converts_optimizer_state():
    old = nn.Parameter(torch.randn(4))
    keep = nn.Parameter(torch.randn(2))
    opt = torch.optim.Adam([old, keep], lr=0.1)
    old.grad, keep.grad = torch.ones(4), torch.ones(2)
    opt.step()
    state = {k: v.clone() for k, v in opt.state[old].items()}
    new = nn.Parameter(torch.randn(2))
    swap_parameter(opt, old, new, lambda t: t[:2] * 10)
    assert opt.param_groups[0]["params"] == [new, keep] and old not in opt.state
    torch.testing.assert_close(opt.state[new]["exp_avg"], state["exp_avg"][:2] * 10)
    assert torch.equal(opt.state[new]["step"], state["step"])
    with pytest.raises(ValueError, match="does not train this layer's weight"):
        swap_parameter(opt, nn.Parameter(torch.randn(3)), new, lambda t: t)
