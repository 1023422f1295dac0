"""Smoke test of examples/char_gpt.py with tiny settings (both variants, separate processes)."""
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "examples" / "char_gpt.py"


def test_char_gpt_runs_dense_and_sparse():
    out = subprocess.run([sys.executable, str(SCRIPT), "--steps", "3", "--warmup", "1",
                          "--d-model", "32", "--layers", "1", "--context", "16", "--batch", "4",
                          "--chars", "20000", "--threads", "1", "--mem-steps", "2"],
                         check=True, capture_output=True, text=True, timeout=300).stdout
    lines = out.splitlines()
    dense = next(line for line in lines if line.startswith("dense"))
    sparse = next(line for line in lines if line.startswith("sparse 0.9"))
    # the sparse model has fewer parameters: the projections keep 10% of their weights
    assert int(sparse.split()[2]) < int(dense.split()[1])
    assert "sparse/dense tokens/s" in out


def test_char_gpt_rejects_bad_settings():
    res = subprocess.run([sys.executable, str(SCRIPT), "--steps", "2", "--warmup", "3"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "--steps must exceed --warmup" in res.stderr
