"""sparseprop.benchmarks: one timer (shared with sparsify's only_if_faster), the tables'
layouts, and the old module paths (sparseprop.bench, bench_conv, bench_overhead, models)
that keep working."""
from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import sparseprop
from sparseprop import _timing, convert
from sparseprop._tables import Table
from sparseprop.benchmarks import conv, linear, overhead, resnet, resnet_models


# ----------------------------------------------------------------------------------------
# the one timer
# ----------------------------------------------------------------------------------------
def test_bench_reexports_the_one_timer_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from sparseprop.bench import cpu_model, main, time_interleaved, time_interleaved_samples
    assert time_interleaved is _timing.time_interleaved
    assert time_interleaved_samples is _timing.time_interleaved_samples
    assert callable(main) and isinstance(cpu_model(), str)


def test_sparsify_only_if_faster_times_with_the_shared_timer(monkeypatch):
    calls = []

    def spy(fns, reps=None, warmup=2, **kwargs):
        calls.append((len(fns), reps, warmup, all(isinstance(f, tuple) for f in fns)))
        return _timing.time_interleaved_samples(fns, reps, warmup, **kwargs)

    monkeypatch.setattr(convert, "time_interleaved_samples", spy)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    report = sparseprop.sparsify(model, 0.9, only_if_faster=True, sample_input=torch.randn(4, 32),
                                 reps=3, warmup=1, return_report=True)
    assert calls == [(2, 3, 1, True), (2, 3, 1, True)]  # one dense/sparse pair per layer
    assert all(row["dense_ms"] > 0 and row["sparse_ms"] > 0 for row in report)


def test_pass_items_reset_gradients_untimed_and_compute_them_timed():
    layer = nn.Linear(6, 3)
    x = torch.randn(5, 6, requires_grad=True)
    grad = torch.randn(5, 3)
    items = _timing.pass_items(layer, x, grad)
    assert items.fwd().shape == (5, 3) and x.grad is None
    setup, run = items.fwdbwd
    x.grad, layer.weight.grad = torch.ones(5, 6), torch.ones(3, 6)
    assert setup() is None
    assert x.grad is None and layer.weight.grad is None and layer.bias.grad is None
    run(None)
    expected = grad @ layer.weight.detach()
    torch.testing.assert_close(x.grad, expected)
    setup, run = items.bwd
    y = setup()  # the forward, untimed; gradients reset first
    assert y.shape == (5, 3) and x.grad is None
    run(y)
    torch.testing.assert_close(x.grad, expected)
    _timing.as_call(items.fwdbwd)()  # setup and run in one call: reset, then one gradient
    torch.testing.assert_close(x.grad, expected)
    assert _timing.as_call(items.fwd) is items.fwd


def test_medians_ms():
    assert _timing.medians_ms([[0.001, 0.003, 0.002], [0.5]]) == pytest.approx([2.0, 500.0])


def test_overhead_uses_the_timer_and_rejects_empty_runs():
    r = overhead.measure(size=8, steps=2, rounds=3)
    assert r["dense_us"] > 0 and r["sparse_us"] > 0 and r["ratio"] == r["sparse_us"] / r["dense_us"]
    with pytest.raises(ValueError, match="rounds"):
        overhead.measure(rounds=0)


# ----------------------------------------------------------------------------------------
# table layouts (the README's tables and scripts reading the output rely on them)
# ----------------------------------------------------------------------------------------
def test_linear_table_layout_is_unchanged():
    assert linear.plain_header() == (
        "      shape  batch  sparsity  dense fwd ms  sparse fwd ms   fwd x  dense bwd ms  "
        "sparse bwd ms   bwd x  fwd+bwd x")
    r = linear.Result(256, 512, 16, 0.9, 13107, 2, "avx2", 3, 3, 3, 0.04, 0.031, 0.11, 0.082,
                      0.15, 0.11, 0.0)
    assert linear.plain_row(r) == (
        "    256x512     16       0.9         0.040          0.031    1.29         0.110          "
        "0.082    1.34       1.36")
    md = linear.markdown_table([r]).splitlines()
    assert md[1] == "|---|" + "---:|" * 9
    assert md[2] == "| 256x512 | 16 | 0.9 | 0.040 | 0.031 | 1.29 | 0.110 | 0.082 | 1.34 | 1.36 |"


def test_conv_and_step_table_layouts_are_unchanged():
    assert conv.TABLE.header() == (
        "layer               batch  sparsity  layout  dense fwd ms  sparse fwd ms   fwd x  "
        "dense bwd ms  sparse bwd ms   bwd x  dense f+b ms  sparse f+b ms  fwd+bwd x")
    assert conv.TABLE.markdown([]).splitlines()[1] == "|---|" + "---:|" * 12
    assert resnet.STEP_TABLE.header() == (
        "batch  sparsity  dense step ms  sparse step ms  step x  dense outside-conv %  "
        "sparse outside-conv %  convs-free x  dense peak MiB  sparse peak MiB")
    assert resnet.STEP_TABLE.markdown([]).splitlines()[1] == "|" + "---:|" * 10


def test_table_markdown_align_is_checked():
    assert Table(["a", "b"], "rr", markdown_align="lr").markdown([]).splitlines()[1] == "|---|---:|"
    with pytest.raises(ValueError, match="markdown_align"):
        Table(["a", "b"], "rr", markdown_align="l")


def test_conv_layout_column_names_the_plan_the_layer_built():
    layer = conv.ConvLayer("t", 4, 8, 3, size=6)
    sparse = layer.make(0.5, torch.Generator().manual_seed(0))
    assert conv.layout_used(sparse, 2) == "?"  # nothing built yet
    r = conv.bench_conv_config(layer, sparse, sparse.to_dense(), 2, reps=1, warmup=0,
                               target_time=0.0)
    assert r.layout in ("batch", "width") and r.max_rel_err <= 1e-4
    conv.drop_plans(sparse)
    assert conv.layout_used(sparse, 2) == "?"


# ----------------------------------------------------------------------------------------
# old paths
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("old, name, new, new_name", [
    ("sparseprop.models", "resnet18_cifar", "sparseprop.benchmarks.resnet_models", "resnet18_cifar"),
    ("sparseprop.models", "sparsify_convs", "sparseprop.benchmarks.resnet_models", "sparsify_convs"),
    ("sparseprop.bench_conv", "main_resnet18", "sparseprop.benchmarks.cli", "main_resnet18"),
    ("sparseprop.bench_conv", "ops_table_lines", "sparseprop.benchmarks.resnet_profile",
     "ops_table_lines"),
    ("sparseprop.bench_conv", "CONV_TABLE", "sparseprop.benchmarks.conv", "TABLE"),
    ("sparseprop.bench_conv", "check_conv", "sparseprop.benchmarks.checks", "max_rel_error"),
    ("sparseprop.bench_overhead", "overhead_line", "sparseprop.benchmarks.overhead", "overhead_line"),
    ("sparseprop.bench", "Result", "sparseprop.benchmarks.linear", "Result"),
    ("sparseprop.bench", "run_settings", "sparseprop.benchmarks.settings", "run_settings"),
])
def test_old_names_warn_and_are_the_new_objects(old, name, new, new_name):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} is deprecated: it moved to {new}\.{new_name}"):
        obj = getattr(module, name)
    assert obj is getattr(importlib.import_module(new), new_name)


def test_from_import_of_a_moved_name_warns():
    with pytest.warns(DeprecationWarning, match="sparseprop.models.BasicBlock"):
        from sparseprop.models import BasicBlock
    assert BasicBlock is resnet_models.BasicBlock


def test_unknown_names_of_old_modules_raise_attribute_error():
    import sparseprop.bench_conv
    import sparseprop.models

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for module in (sparseprop.models, sparseprop.bench_conv, sparseprop.bench):
            with pytest.raises(AttributeError, match="no attribute 'nope'"):
                module.nope


def test_the_core_package_loads_no_benchmark_module():
    code = ("import sys, sparseprop, torch; "
            "sparseprop.sparsify(torch.nn.Sequential(torch.nn.Linear(8, 8)), 0.5, "
            "only_if_faster=True, sample_input=torch.randn(2, 8), reps=1, warmup=0); "
            "print(sorted(m for m in sys.modules if m.startswith('sparseprop.bench')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_make_layers_storage_dtype_keeps_a_float32_dense_twin_with_the_same_weights():
    from sparseprop.benchmarks.linear import make_layers

    sparse, dense = make_layers(16, 8, 0.5, storage=torch.bfloat16)
    assert sparse.values.dtype == torch.bfloat16 and dense.weight.dtype == torch.float32
    assert torch.equal(dense.weight, sparse.weight.detach().float())


def test_child_peak_rss_is_not_the_parents():
    """Linux's ru_maxrss survives execve; the RSS children must report their own peak."""
    import subprocess
    import sys

    big = torch.ones(1024 * 2**20 // 4)  # 1 GiB resident in this (parent) process
    code = ("import resource; from sparseprop.benchmarks.resnet_rss import peak_rss_of_this_process as p; "
            "print(p(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    own, inherited = map(float, child.stdout.split())
    # ru_maxrss still carries this process's peak (>= 1 GiB); the child's own peak does not.
    assert inherited >= big.nbytes / 2**20
    assert own < inherited - big.nbytes / 2**20 / 2
