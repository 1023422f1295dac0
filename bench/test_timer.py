"""Fast checks of the benchmark tooling itself (sparseprop.bench); no timing is asserted."""
from __future__ import annotations

import pytest

bench = pytest.importorskip("sparseprop.bench")


def test_time_interleaved_rotates_and_counts():
    calls = []
    fns = [lambda: calls.append("a"), lambda: calls.append("b")]
    samples = bench.time_interleaved_samples(fns, reps=3, warmup=1)
    assert [len(s) for s in samples] == [3, 3]
    # 4 repetitions (1 warm-up + 3), each running both; the first item alternates.
    assert calls == ["b", "a", "a", "b", "b", "a", "a", "b"]
    medians = bench.time_interleaved(fns, reps=2, warmup=0)
    assert len(medians) == 2 and all(m >= 0 for m in medians)


def test_time_interleaved_setup_is_untimed_and_passed():
    seen = []
    samples = bench.time_interleaved_samples([(lambda: 41, lambda v: seen.append(v + 1))],
                                             reps=2, warmup=0)
    assert seen == [42, 42] and len(samples[0]) == 2


def test_time_interleaved_adaptive_bounds():
    noop = [lambda: None, lambda: None]
    s = bench.time_interleaved_samples(noop, warmup=0, min_reps=4, max_reps=9, target_time=10.0)
    assert len(s[0]) == 9  # never reaches the target: stops at max_reps
    s = bench.time_interleaved_samples(noop, warmup=0, min_reps=4, max_reps=9, target_time=0.0)
    assert len(s[0]) == 4  # target met at once: min_reps still run


def test_cli_quick_markdown(tmp_path, capsys):
    csv_path = tmp_path / "r.csv"
    rc = bench.main(["--shapes", "32x16", "--batch", "2", "--sparsity", "0.5,0.9",
                     "--reps", "1", "--warmup", "0", "--markdown", "--csv", str(csv_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| shape | batch | sparsity |" in out and "| 32x16 | 2 | 0.9 |" in out
    lines = csv_path.read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("in_features,out_features,batch,sparsity")


@pytest.mark.parametrize("argv", [["--shapes", "12"], ["--sparsity", "1.5"], ["--batch", "0"],
                                  ["--isa", "no-such-isa"]])
def test_cli_rejects_bad_arguments(argv):
    with pytest.raises(SystemExit) as err:
        bench.main(argv + ["--reps", "1"])
    assert err.value.code == 2
