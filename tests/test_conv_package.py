"""The sparseprop.conv package's own contracts: the layout choice (set_layout /
pick_layout / get_layout) and its deprecated old names, the deprecated conv_layout module,
the plan interface (each layout's plan through the one autograd Function against dense
F.conv2d), the explicit PlanCache, and one check per call."""
from __future__ import annotations

import copy
import importlib
import pickle
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

import sparseprop
from sparseprop import CSRPattern, SparseConv2d
from sparseprop import conv
from sparseprop.conv import BatchPlan, ConvPlan, PlanCache, SparseConv2dFn, WidthPlan

from conftest import tol


@pytest.fixture(autouse=True)
def restore_layout():
    previous = conv.get_layout()
    yield
    conv.set_layout(previous)


# --------------------------------------------------------------------------------------
# the layout choice
# --------------------------------------------------------------------------------------
def test_set_layout_forces_the_plan_type():
    m = SparseConv2d(4, 6, 3, padding=1, sparsity=0.5)
    x = torch.randn(3, 4, 12, 12)
    for name, plan_type in (("batch", BatchPlan), ("width", WidthPlan)):
        assert conv.set_layout(name) in conv.LAYOUTS
        assert conv.get_layout() == name
        assert conv.pick_layout(m.spec, 3, 12) == name  # forced: the rule is not asked
        m._plans.clear()
        m(x)
        (key,) = list(m._plans)
        assert key[0] == name
        plan = m._plans.get(m.pattern, key, lambda: pytest.fail("the plan should be cached"))
        assert type(plan) is plan_type and plan.layout == name


def test_auto_layout_follows_the_rule():
    conv.set_layout("auto")
    spec = SparseConv2d(8, 8, 3, stride=2, padding=1).spec
    assert conv.pick_layout(spec, 8, 16) == "batch"
    assert conv.pick_layout(spec, 1, 16) == "width"
    assert conv.pick_layout(SparseConv2d(8, 8, 3, padding=1).spec, 4, 8, chwn_input=True) == "batch"


def test_set_layout_rejects_unknown_names():
    conv.set_layout("width")
    for bad in ("fastest", "", None, "Batch"):
        with pytest.raises(ValueError, match=r"conv layout must be one of \('auto', 'batch', 'width'\)"):
            conv.set_layout(bad)
    assert conv.get_layout() == "width"


def test_layout_change_never_reuses_a_plan_of_the_other_layout():
    m = SparseConv2d(4, 6, 3, padding=1, sparsity=0.5)
    d = m.to_dense()
    x = torch.randn(2, 4, 7, 7)
    outs = []
    for name in ("batch", "width", "batch"):
        conv.set_layout(name)
        outs.append(m(x).detach())
        torch.testing.assert_close(outs[-1], d(x).detach(), **tol(36))
    assert sorted(key[0] for key in m._plans) == ["batch", "width"]


# --------------------------------------------------------------------------------------
# deprecated old names
# --------------------------------------------------------------------------------------
def test_set_strategy_warns_and_sets_the_layout():
    conv.set_layout("auto")
    with pytest.warns(DeprecationWarning, match="set_strategy is deprecated, use sparseprop.conv.set_layout"):
        assert conv.set_strategy("width") == "auto"
    assert conv.get_layout() == "width"
    with pytest.warns(DeprecationWarning):
        with pytest.raises(ValueError, match="conv strategy must be one of"):
            conv.set_strategy("fastest")
    assert conv.get_layout() == "width"


def test_pick_strategy_warns_and_agrees_with_pick_layout():
    conv.set_layout("auto")
    specs = [SparseConv2d(8, 8, k, stride=s, padding=k // 2, groups=g).spec
             for k, s, g in ((3, 1, 1), (3, 2, 1), (1, 1, 1), (3, 1, 8))]
    for spec in specs:
        for batch, width, chwn in ((1, 8, False), (8, 32, False), (8, 8, False), (8, 8, True)):
            with pytest.warns(DeprecationWarning, match="pick_strategy is deprecated"):
                old = conv.pick_strategy(spec, batch, width, chwn)
            assert old == conv.pick_layout(spec, batch, width, chwn)


def test_strategies_warns_and_is_layouts():
    with pytest.warns(DeprecationWarning, match="STRATEGIES is deprecated"):
        assert conv.STRATEGIES == conv.LAYOUTS == ("auto", "batch", "width")
    with pytest.warns(DeprecationWarning):
        from sparseprop.conv import STRATEGIES as imported
    assert imported == conv.LAYOUTS
    with pytest.raises(AttributeError, match="no attribute 'STRATEGY'"):
        conv.STRATEGY  # noqa: B018


def test_new_names_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conv.set_layout(conv.get_layout())
        conv.pick_layout(SparseConv2d(2, 2, 3).spec, 2, 8)
        assert conv.LAYOUTS
        SparseConv2d(2, 2, 3, padding=1, sparsity=0.5)(torch.randn(2, 2, 5, 5))


def test_conv_layout_module_warns_and_reexports():
    sys.modules.pop("sparseprop.conv_layout", None)
    with pytest.warns(DeprecationWarning, match="sparseprop.conv_layout is deprecated"):
        old = importlib.import_module("sparseprop.conv_layout")
    for name in ("LayoutBatchNorm2d", "layout_resident_batchnorms", "plain_batchnorms", "is_chwn",
                 "chwn_view", "to_chwn", "phases_chwn", "from_phases_chwn", "subsample_chwn"):
        assert getattr(old, name) is getattr(conv, name), name
    assert set(old.__all__) == {"LayoutBatchNorm2d", "is_chwn", "chwn_view", "layout_resident_batchnorms"}


def test_pickles_from_before_the_move_still_load():
    """Whole-model pickles name classes by module: ones written when these lived in
    sparseprop.conv_layout / sparseprop.conv (a module then) load into the new classes."""
    m = SparseConv2d(3, 4, 3, sparsity=0.5)
    objects = ((conv.LayoutBatchNorm2d(3), "sparseprop.conv_layout"), (m.spec, "sparseprop.conv"),
               (m._plans, "sparseprop.conv"))
    for obj, old_module in objects:
        data = pickle.dumps(obj, protocol=0)  # text protocol: module names on lines of their own
        new_module = type(obj).__module__.encode() + b"\n"
        assert new_module in data
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            back = pickle.loads(data.replace(new_module, old_module.encode() + b"\n"))
        assert type(back) is type(obj)
    assert back.capacity == m._plans.capacity


def test_removed_internal_modules_are_gone():
    for name in ("conv_width", "conv_ops", "conv_dtypes"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(f"sparseprop.{name}")


def test_bench_strategy_flag_warns_and_means_layout(capsys):
    from sparseprop.benchmarks.cli import main_conv

    argv = ["--layers", "4-4-k3@5", "--batch", "2", "--sparsity", "0.5", "--reps", "1",
            "--warmup", "0", "--no-check"]
    assert main_conv(argv + ["--strategy", "width"]) == 0
    out, err = capsys.readouterr()
    assert "--strategy is deprecated, use --layout" in err
    assert " width " in out
    assert main_conv(argv + ["--layout", "batch"]) == 0
    out, err = capsys.readouterr()
    assert "deprecated" not in err and " batch " in out
    with pytest.raises(SystemExit):
        main_conv(argv + ["--layout", "batch", "--strategy", "width"])
    assert "give --layout only" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# the plan interface
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("plan_type", [BatchPlan, WidthPlan], ids=lambda t: t.layout)
@pytest.mark.parametrize("kernel,stride,padding,groups", [(3, 1, 1, 1), (3, 2, 1, 2), (1, 1, 0, 1),
                                                          (2, (2, 1), (0, 1), 1)])
def test_each_plan_through_the_interface_matches_dense(plan_type, kernel, stride, padding, groups):
    gen = torch.Generator().manual_seed(3)
    m = SparseConv2d(4, 6, kernel, stride=stride, padding=padding, groups=groups, sparsity=0.5,
                     generator=gen)
    spec, pattern = m.spec, m.pattern
    x = torch.randn(3, 4, 7, 6, generator=gen, requires_grad=True)
    values = m.values.detach().clone().requires_grad_()
    bias = torch.randn(6, generator=gen, requires_grad=True)
    plan = plan_type.build(spec, pattern, 3, 7, 6, spec.pads())
    assert isinstance(plan, ConvPlan) and plan.layout in conv.LAYOUTS
    y = SparseConv2dFn.apply(x, values, bias, pattern, plan)

    xd = x.detach().clone().requires_grad_()
    weight = pattern.to_dense(values.detach()).view(m.weight_shape).requires_grad_()
    bd = bias.detach().clone().requires_grad_()
    yd = F.conv2d(xd, weight, bd, spec.stride, spec.padding, spec.dilation, spec.groups)
    assert y.shape == yd.shape == (3, 6, plan.oh, plan.ow)
    torch.testing.assert_close(y, yd, **tol(36))
    gy = torch.randn(yd.shape, generator=gen)
    y.backward(gy)
    yd.backward(gy)
    torch.testing.assert_close(x.grad, xd.grad, **tol(36))
    torch.testing.assert_close(values.grad, pattern.gather(weight.grad.flatten(1)), **tol(200))
    torch.testing.assert_close(bias.grad, bd.grad, **tol(200))


@pytest.mark.parametrize("plan_type", [BatchPlan, WidthPlan], ids=lambda t: t.layout)
def test_plan_backward_computes_only_what_is_asked(plan_type):
    m = SparseConv2d(3, 5, 3, padding=1, sparsity=0.5)
    x = torch.randn(2, 3, 6, 6)
    plan = plan_type.build(m.spec, m.pattern, 2, 6, 6, m.spec.pads())
    values = m.values.detach()
    y = plan.forward(x, values, None, m.pattern)
    gy = torch.randn_like(y)
    full = plan.backward(gy, x, values, m.pattern, True, True, True)
    assert all(g is not None for g in full)
    for need in ((True, False, False), (False, True, False), (False, False, True)):
        got = plan.backward(gy, x, values, m.pattern, *need)
        for wanted, g, ref in zip(need, got, full):
            assert (g is not None) == wanted
            if wanted:
                assert torch.equal(g, ref)


def test_the_interface_is_abstract():
    with pytest.raises(TypeError):
        ConvPlan(1, 1, 1, (0, 0, 0, 0), 1, 1, *[torch.zeros(1, dtype=torch.int64)] * 4)


# --------------------------------------------------------------------------------------
# PlanCache
# --------------------------------------------------------------------------------------
def test_plan_cache_evicts_least_recently_used_first():
    cache = PlanCache(capacity=2)
    pattern = CSRPattern.random(4, 4, 0.5)
    built = []

    def build(name):
        return lambda: built.append(name) or name

    assert cache.get(pattern, "a", build("a")) == "a"
    assert cache.get(pattern, "b", build("b")) == "b"
    assert cache.get(pattern, "a", build("a!")) == "a"  # a hit: a is now the most recent
    assert cache.get(pattern, "c", build("c")) == "c"   # evicts b, not a
    assert list(cache) == ["a", "c"] and len(cache) == 2
    assert cache.get(pattern, "b", build("b2")) == "b2"  # rebuilt
    assert built == ["a", "b", "c", "b2"]


def test_plan_cache_clear_and_copies_start_empty():
    cache = PlanCache(capacity=3)
    pattern = CSRPattern.random(4, 4, 0.5)
    plan = cache.get(pattern, "k", object)
    for copied in (pickle.loads(pickle.dumps(cache)), copy.deepcopy(cache)):
        assert len(copied) == 0 and copied.capacity == 3
    cache.clear()
    assert len(cache) == 0 and list(cache) == []
    assert cache.get(pattern, "k", object) is not plan  # rebuilt after clear


def test_plan_cache_capacity_is_checked():
    for bad in (-1, 1.5, True, "8"):
        with pytest.raises(ValueError, match="capacity must be an int >= 0"):
            PlanCache(capacity=bad)
    cache = PlanCache(capacity=0)  # 0 keeps nothing: every call builds
    pattern = CSRPattern.random(4, 4, 0.5)
    assert cache.get(pattern, "k", object) is not cache.get(pattern, "k", object)
    assert len(cache) == 0


def test_layer_plans_follow_pattern_and_input_layout():
    m = SparseConv2d(4, 4, 3, padding=1, sparsity=0.5)
    conv.set_layout("batch")
    x = torch.randn(2, 4, 5, 5)
    m(x)
    m(conv.to_chwn(x))  # the same shape in the other layout: a plan of its own
    assert sorted(key[-1] for key in m._plans) == [False, True]
    new = CSRPattern.random(*m.pattern_shape, 0.3)
    m.set_pattern(new, torch.randn(new.nnz))
    assert len(m._plans) == 0  # plans derive from the pattern


# --------------------------------------------------------------------------------------
# one check per call
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,autocast", [(torch.float32, False), (torch.bfloat16, False),
                                            (torch.float32, True), (torch.float64, False)])
def test_a_call_is_checked_once(monkeypatch, dtype, autocast):
    from sparseprop.conv import dtypes as conv_dtypes, entry, spec as conv_spec

    calls = []
    real = conv_spec.check_call

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(entry, "check_call", counting)
    monkeypatch.setattr(conv_dtypes, "check_call", counting)
    m = SparseConv2d(3, 4, 3, padding=1, sparsity=0.5)
    if dtype == torch.float64:
        m.double()
    x = torch.randn(2, 3, 6, 6, dtype=dtype, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        m(x).float().sum().backward()
    assert calls == [m.spec]
    calls.clear()
    sparseprop.functional.sparse_conv2d(x.detach().to(torch.float32), m.pattern,
                                        m.values.detach().float(), padding=1)
    assert len(calls) == 1


def test_functional_form_checks_its_arguments():
    pattern = CSRPattern.random(4, 3 * 9, 0.5)
    values = torch.randn(pattern.nnz)
    x = torch.randn(2, 3, 6, 6)
    y = sparseprop.functional.sparse_conv2d(x, pattern, values, padding=1)
    assert y.shape == (2, 4, 6, 6)
    with pytest.raises(TypeError, match="CSRPattern"):
        sparseprop.functional.sparse_conv2d(x, pattern.to_dense(values), values)
    with pytest.raises(ValueError, match="3-D or 4-D"):
        sparseprop.functional.sparse_conv2d(x[0, 0], pattern, values)
    with pytest.raises(ValueError, match=r"values must have shape"):
        sparseprop.functional.sparse_conv2d(x, pattern, values[1:], padding=1)
    with pytest.raises(TypeError, match="float32"):
        sparseprop.functional.sparse_conv2d(x.double(), pattern, values, padding=1)
