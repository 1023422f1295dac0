"""The ResNet-18 step bench: per-op table, peak-RSS children, and a tiny end-to-end run."""
import math

import pytest

from sparseprop.benchmarks import cli, resnet_profile
from sparseprop.benchmarks.resnet_rss import peak_rss_mib


def test_ops_table_ranks_by_sparse_time_and_shows_dense_twin():
    lines = resnet_profile.ops_table_lines({"bn": 2.0, "conv": 9.0}, {"bn": 3.0, "spconv": 5.0, "relu": 1.0}, 2)
    assert lines[1].split() == ["spconv", "5.0", "0.0"]  # absent from the dense model: 0
    assert lines[2].split() == ["bn", "3.0", "2.0"]
    assert len(lines) == 4 and lines[-1].split()[-2:] == ["9.0", "11.0"]  # totals over all ops


def test_peak_rss_rejects_unknown_model_kind():
    with pytest.raises(ValueError, match="kind"):
        peak_rss_mib("sparce", 0.9, 2, 1, 1, None)


def test_resnet18_bench_tiny_run_prints_ops_and_breakdown(capsys):
    rc = cli.main_resnet18(["--batch", "2", "--sparsity", "0.9", "--reps", "1", "--warmup", "0",
                                   "--profile-steps", "1", "--ops", "3", "--rss-steps", "0"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "per-op self CPU time" in out and "SparseConv2dFn" in out
    assert "outside-conv %" in out and "peak MiB" in out


def test_resnet18_bench_rejects_negative_counts():
    with pytest.raises(SystemExit):
        cli.main_resnet18(["--rss-steps", "-1"])


@pytest.mark.slow
def test_peak_rss_children_report_plausible_sizes():
    # Two fresh processes; each holds torch and an 11M-parameter model (>= 45 MB of weights).
    for kind in ("dense", "sparse"):
        mib = peak_rss_mib(kind, 0.9, 2, 1, 1, None)
        assert math.isfinite(mib) and 100 < mib < 8192


@pytest.mark.slow
def test_resnet18_bench_gmp_run_prints_whole_run_ratio(capsys):
    rc = cli.main_resnet18(["--batch", "2", "--sparsity", "0.9", "--reps", "1", "--warmup", "0",
                                   "--profile-steps", "0", "--rss-steps", "0", "--gmp-steps", "4"])
    out = capsys.readouterr().out
    assert rc == 0
    header = next(line for line in out.splitlines() if line.startswith("steps"))
    row = out.splitlines()[out.splitlines().index(header) + 1].split()
    assert row[:3] == ["4", "2", "0.9"]
    assert abs(float(row[3]) - 0.9) < 0.01  # the pruner reached the target (ramp: first half)
    assert float(row[6]) > 0  # end-to-end x


@pytest.mark.parametrize("argv", [["--gmp-steps", "1"], ["--gmp-steps", "-2"],
                                  ["--gmp-sparsity", "1.0"], ["--gmp-sparsity", "0"]])
def test_resnet18_bench_rejects_bad_gmp_options(argv):
    with pytest.raises(SystemExit):
        cli.main_resnet18(argv)


def test_gmp_vs_dense_validates_and_leaves_base_alone():
    import torch
    from sparseprop.benchmarks.resnet_gmp import gmp_vs_dense
    from sparseprop.benchmarks.resnet_models import resnet18_cifar

    base = resnet18_cifar()
    with pytest.raises(ValueError, match="steps"):
        gmp_vs_dense(base, 1, 2)
    with pytest.raises(ValueError, match="final_sparsity"):
        gmp_vs_dense(base, 4, 2, final_sparsity=1.0)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    r = gmp_vs_dense(base, 3, 2, end_fraction=1.0)
    assert r.steps == 3 and r.dense_s > 0 and r.pruned_s > 0 and math.isfinite(r.speedup)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
