"""The main job reports the whole run: end-to-end speedup, peak memory, and a per-step
clock and loss (what ``--plot`` draws on one wall-time axis)."""
import pytest
import torch

pytest.importorskip("sklearn")

from sparseprop import demo  # noqa: E402
from sparseprop.demo_report import RunLog, results_table, rss_bytes  # noqa: E402

TINY = ["--hidden", "64", "--epochs", "2", "--batch-size", "256", "--quiet"]


def test_reseeding_rebuilds_the_same_initialization():
    torch.manual_seed(3)
    a, _ = demo.build_model("mlp", 64, 32, 10)
    torch.manual_seed(3)
    b, _ = demo.build_model("mlp", 64, 32, 10)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_table_shows_end_to_end_next_to_per_epoch():
    dense = RunLog("dense", accs=[96.0, 97.0], times=[2.0, 2.0], param_bytes=1000,
                   peak_rss=300 << 20, base_rss=50 << 20)
    sparse = RunLog("sparse (gmp)", accs=[96.0, 97.0], times=[3.0, 0.5], setup=0.5,
                    on_sparse=[0.0, 1.0], param_bytes=100, peak_rss=100 << 20, base_rss=90 << 20)
    text = results_table(dense, sparse)
    assert "end to end" in text and "peak RSS" in text and "run's own" in text
    assert "250.00 MiB" in text and "10.00 MiB" in text  # peak minus the run's starting RSS
    assert "4.00x" in text   # per epoch: 2.0 / 0.5 (the fully sparse epoch)
    assert "1.00x" in text   # end to end: 4.0 / (0.5 + 3.0 + 0.5)
    assert "100.00 MiB" in text and "300.00 MiB" in text


def test_run_logs_clock_loss_and_peak_memory():
    args = demo.parse_args(TINY)
    dense, sparse, _, _ = demo.run(args)
    steps = 2 * ((1438 + 255) // 256)
    for log in (dense, sparse):
        assert len(log.clock) == len(log.losses) == steps
        assert all(b > a for a, b in zip(log.clock, log.clock[1:]))  # one increasing axis
        assert log.clock[-1] <= log.total + 1e-6
        assert log.peak_rss > 0 and log.peak_rss >= rss_bytes() // 4
        assert 0 < log.base_rss < log.peak_rss
    assert sparse.clock[0] >= sparse.setup  # the sparse clock includes the pruner's setup
