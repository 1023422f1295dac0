"""The main job (``python -m sparseprop``): arguments, every algorithm end to end on a tiny
configuration, the tables, the progress output and the optional plot."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest

pytest.importorskip("sklearn")

from sparseprop import demo  # noqa: E402
from sparseprop.demo_report import Progress, RunLog, results_table  # noqa: E402

# Tiny and single-threaded: a few seconds for the whole file, and no OpenMP barrier
# stalls when other processes compete for the cores.
TINY = ["--epochs", "2", "--hidden", "64", "--threads", "1", "--quiet"]


# --- arguments ----------------------------------------------------------------------------
def test_defaults():
    args = demo.parse_args([])
    assert (args.algorithm, args.sparsity, args.model, args.hidden) == ("gmp", 0.95, "mlp", 4096)
    assert args.plot is None and not args.quiet
    assert demo.parse_args(["--model", "deep-mlp"]).hidden == 2048
    assert demo.parse_args(["--no-progress"]).quiet


@pytest.mark.parametrize("value", ["1.5", "0", "1", "-0.1", "abc", "nan"])
def test_bad_sparsity_is_a_clear_usage_error(value, capsys):
    with pytest.raises(SystemExit) as exc:
        demo.parse_args(["--sparsity", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--sparsity" in err and "(0, 1)" in err


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--hidden", "-4"], ["--batch-size", "x"],
                                  ["--threads", "0"], ["--algorithm", "obd"], ["--model", "cnn"]])
def test_other_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        demo.parse_args(argv)
    assert exc.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_plot_without_matplotlib_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(SystemExit, match="pip install matplotlib"):
        demo.parse_args(["--plot", str(tmp_path / "curves.png")])


def test_plot_into_missing_directory(tmp_path, capsys):
    with pytest.raises(SystemExit):
        demo.parse_args(["--plot", str(tmp_path / "nope" / "curves.png")])
    assert "does not exist" in capsys.readouterr().err


def test_help_from_the_command_line():
    out = subprocess.run([sys.executable, "-m", "sparseprop", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "--algorithm" in out and all(name in out for name in demo.ALGORITHMS)


# --- end to end ---------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", list(demo.ALGORITHMS))
def test_every_algorithm_end_to_end(algorithm, capsys, monkeypatch):
    # A 64-wide layer is too small for the sparse kernels to pay ("auto" keeps it dense):
    # pin the switch point to check that every schedule ends on the sparse kernels.
    monkeypatch.setenv("SPARSEPROP_SPARSE_FROM", "0.7")
    args = demo.parse_args(TINY + ["--algorithm", algorithm])
    dense, sparse, model, names = demo.run(args)
    assert names == ["2"]
    assert len(dense.accs) == len(sparse.accs) == 2
    assert all(0.0 <= a <= 100.0 for a in dense.accs + sparse.accs)
    # Every schedule reaches the target by the end and ends on the sparse kernels.
    assert sparse.sparsity[-1] == pytest.approx(0.95, abs=1e-3)
    assert type(model[2]).__name__ == "SparseLinear"
    assert sparse.on_sparse[-1] == 1.0
    assert sparse.param_bytes < dense.param_bytes

    text = demo.report(args, dense, sparse, model, names)
    for cell in ("test acc", "s/epoch", "speedup", "parameters", "dense", f"sparse ({algorithm})",
                 "SparseLinear", "64x64", "95.0%", "not pruned (input layer)",
                 "not pruned (output layer)", "mask changes during training: "):
        assert cell in text, cell
    if algorithm in ("magnitude", "random-erk", "snip", "synflow"):  # pruned at set-up only
        assert not sparse.updates and "none (pruned at set-up" in text
    else:
        assert sparse.updates and "x a dense training step" in text


def test_main_prints_header_and_tables(capsys):
    assert demo.main(TINY + ["--algorithm", "magnitude", "--sparsity", "0.9"]) == 0
    out = capsys.readouterr()
    assert "ISA" in out.out and "threads" in out.out
    assert "input and output layers stay dense" in out.out
    assert "results after 2 epochs" in out.out and "90.0%" in out.out
    assert out.err == ""  # --quiet: no progress


def test_gmp_learns_and_stays_close_to_dense():
    args = demo.parse_args(["--epochs", "4", "--hidden", "256", "--lr", "3e-3", "--threads", "1",
                            "--quiet"])
    dense, sparse, _, _ = demo.run(args)
    assert dense.accs[-1] > 85.0
    assert sparse.accs[-1] > dense.accs[-1] - 10.0


def test_deep_mlp_prunes_every_hidden_layer():
    args = demo.parse_args(TINY + ["--model", "deep-mlp", "--algorithm", "random-erk"])
    _, sparse, model, names = demo.run(args)
    assert names == ["2", "4", "6"]
    assert all(type(model[int(n)]).__name__ == "SparseLinear" for n in names)
    assert sparse.sparsity[-1] == pytest.approx(0.95, abs=1e-3)


# --- report pieces ------------------------------------------------------------------------
def test_speedup_counts_only_fully_sparse_epochs():
    dense = RunLog("dense", accs=[90.0, 95.0, 96.0], times=[2.0, 2.0, 2.0], param_bytes=1000)
    sparse = RunLog("sparse (gmp)", accs=[80.0, 94.0, 96.0], times=[5.0, 0.5, 0.5],
                    on_sparse=[0.5, 1.0, 1.0], sparsity=[0.8, 0.95, 0.95], param_bytes=100)
    text = results_table(dense, sparse)
    assert "4.00x" in text  # 2.0 / 0.5: the mixed first epoch is not counted
    assert "the 2 of 3 epochs run entirely on the sparse kernels" in text
    assert "10.0x smaller" in text


def test_progress_one_line_per_epoch_off_a_terminal():
    stream = io.StringIO()
    progress = Progress(stream=stream)
    progress.start("dense", 0, 2)
    for i in range(5):
        progress.step(i + 1, 5, 1.0)
    progress.end(0.5, "test acc 90.0%")
    assert stream.getvalue().count("\n") == 1 and "\r" not in stream.getvalue()


def test_progress_redraws_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    progress = Progress(stream=stream)
    progress.start("sparse", 1, 2)
    progress.step(1, 2, 1.0)
    progress.end(0.5, "done")
    assert stream.getvalue().count("\r") == 2 and "epoch 2/2" in stream.getvalue()
    silent = Tty()
    Progress(enabled=False, stream=silent).end(0.5, "done")
    assert silent.getvalue() == ""


def test_plot_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "curves.png"
    assert demo.main(TINY + ["--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot saved to {path}" in capsys.readouterr().out
