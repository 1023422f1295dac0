"""ISA dispatch, the SPARSEPROP_ISA variable, configuration reporting and threads."""
from __future__ import annotations

import json
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import sparseprop
from sparseprop import SparseLinear

from conftest import ISAS, KNOWN_ISAS, UNAVAILABLE_ISAS, run_python

CONFIG_KEYS = {"version", "active_isa", "available_isas", "compiled_isas", "isa_forced_by_env",
               "cpu_features", "num_threads", "threads_follow_torch", "hardware_threads", "threading", "compiler",
               "build_flags", "arch", "torch", "numpy", "kernels"}


# --------------------------------------------------------------------------------------
# ISA selection
# --------------------------------------------------------------------------------------
def test_available_isas_starts_with_scalar():
    isas = sparseprop.available_isas()
    assert isinstance(isas, list) and isas and isas[0] == "scalar"
    assert all(isinstance(name, str) for name in isas)
    assert len(set(isas)) == len(isas)
    assert set(isas) <= set(KNOWN_ISAS)
    compiled = sparseprop.config()["compiled_isas"]
    assert set(isas) <= set(compiled) and compiled[0] == "scalar"
    assert sparseprop.get_isa() in isas


def test_isas_match_cpu_features():
    c = sparseprop.config()
    features, compiled, isas = c["cpu_features"], c["compiled_isas"], sparseprop.available_isas()
    for isa, feature in (("avx2", "avx2"), ("avx512", "avx512f"), ("neon", "neon")):
        if isa in compiled:
            assert (isa in isas) == features[feature], isa
        else:
            assert isa not in isas, isa


def test_use_isa_switches_and_restores():
    start = sparseprop.get_isa()
    for name in ISAS:
        with sparseprop.use_isa(name):
            assert sparseprop.get_isa() == name
            for inner in ISAS:
                with sparseprop.use_isa(inner):
                    assert sparseprop.get_isa() == inner
                assert sparseprop.get_isa() == name
        assert sparseprop.get_isa() == start


def test_use_isa_restores_after_exception():
    start = sparseprop.get_isa()
    with pytest.raises(KeyError):
        with sparseprop.use_isa("scalar"):
            assert sparseprop.get_isa() == "scalar"
            raise KeyError("boom")
    assert sparseprop.get_isa() == start


def test_set_isa_auto_and_none_pick_the_best():
    sparseprop.set_isa("scalar")
    sparseprop.set_isa(None)
    assert sparseprop.get_isa() == ISAS[-1]
    sparseprop.set_isa("scalar")
    sparseprop.set_isa("auto")
    assert sparseprop.get_isa() == ISAS[-1]
    with sparseprop.use_isa(None):
        assert sparseprop.get_isa() == ISAS[-1]


@pytest.mark.parametrize("name", ISAS)
def test_set_isa_is_case_insensitive(name):
    sparseprop.set_isa(name.upper())
    assert sparseprop.get_isa() == name
    assert sparseprop.config()["active_isa"] == name


def test_isa_choice_changes_kernel_not_result():
    m = SparseLinear(40, 30, sparsity=0.5)
    x = torch.randn(21, 40)
    outs = []
    for name in ISAS:
        with sparseprop.use_isa(name):
            outs.append(m(x).detach())
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------
# SPARSEPROP_ISA (import time: subprocesses)
# --------------------------------------------------------------------------------------
_REPORT = textwrap.dedent("""
    import contextlib, io, json, sparseprop
    c = sparseprop.config()
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        sparseprop.show_config()
    print(json.dumps({"isa": sparseprop.get_isa(), "env": c["isa_forced_by_env"],
                      "available": sparseprop.available_isas(), "shown": shown.getvalue()}))
""")


def _report(env_value):
    proc = run_python(_REPORT, {"SPARSEPROP_ISA": env_value})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_env_unset_gives_best_isa():
    assert _report(None)["isa"] == ISAS[-1]


@pytest.mark.parametrize("value,expected", [("scalar", "scalar"), ("SCALAR", "scalar"), ("auto", None)])
def test_env_var_forces_isa(value, expected):
    report = _report(value)
    assert report["isa"] == (expected or report["available"][-1])
    assert report["env"] == value
    assert f"(SPARSEPROP_ISA={value})" in report["shown"]


@pytest.mark.skipif(len(ISAS) < 2, reason="only the scalar path exists here")
def test_env_var_forces_each_simd_isa():
    for name in ISAS[1:-1] or ISAS[:1]:
        assert _report(name)["isa"] == name


def test_env_var_bad_value_fails_import():
    proc = run_python("import sparseprop", {"SPARSEPROP_ISA": "bogus"})
    assert proc.returncode != 0
    assert "RuntimeError" in proc.stderr
    assert "SPARSEPROP_ISA='bogus' cannot be used" in proc.stderr
    assert "unknown ISA" in proc.stderr


@pytest.mark.skipif(not UNAVAILABLE_ISAS, reason="every known ISA is available here")
def test_env_var_unavailable_isa_fails_import():
    name = UNAVAILABLE_ISAS[0]
    proc = run_python("import sparseprop", {"SPARSEPROP_ISA": name})
    assert proc.returncode != 0
    assert "RuntimeError" in proc.stderr and f"SPARSEPROP_ISA='{name}' cannot be used" in proc.stderr
    assert "not supported" in proc.stderr


# --------------------------------------------------------------------------------------
# config / show_config
# --------------------------------------------------------------------------------------
def test_config_keys_and_types():
    c = sparseprop.config()
    assert set(c) == CONFIG_KEYS
    assert c["version"] == sparseprop.__version__
    assert c["active_isa"] == sparseprop.get_isa()
    assert c["available_isas"] == sparseprop.available_isas()
    assert isinstance(c["cpu_features"], dict) and set(c["cpu_features"]) >= {"avx2", "avx512f", "neon"}
    assert all(isinstance(v, bool) for v in c["cpu_features"].values())
    assert c["num_threads"] == sparseprop.get_num_threads()
    assert isinstance(c["hardware_threads"], int) and c["hardware_threads"] >= 1
    assert c["torch"] == torch.__version__
    assert isinstance(c["compiler"], str) and isinstance(c["build_flags"], str)
    assert isinstance(c["arch"], str) and c["arch"]


def test_config_tracks_changes():
    with sparseprop.use_isa("scalar"):
        assert sparseprop.config()["active_isa"] == "scalar"
    sparseprop.set_num_threads(1)
    c = sparseprop.config()
    assert c["num_threads"] == 1 and c["threads_follow_torch"] is False
    sparseprop.set_num_threads(None)
    assert sparseprop.config()["threads_follow_torch"] is True


def test_show_config_prints(capsys):
    assert sparseprop.show_config() is None
    out = capsys.readouterr().out
    c = sparseprop.config()
    assert out.startswith(f"sparseprop {sparseprop.__version__}")
    assert f"active ISA:     {c['active_isa']}" in out
    assert "available ISAs: " + ", ".join(c["available_isas"]) in out
    assert "compiled ISAs:  " + ", ".join(c["compiled_isas"]) in out
    assert "CPU features:" in out and "threads:" in out and "compiler:" in out
    assert f"torch {torch.__version__}" in out


# --------------------------------------------------------------------------------------
# threads
# --------------------------------------------------------------------------------------
def test_default_threads_follow_torch():
    sparseprop.set_num_threads(None)
    assert sparseprop.get_num_threads() == torch.get_num_threads()
    torch.set_num_threads(1)
    assert sparseprop.get_num_threads() == 1
    torch.set_num_threads(3)
    assert sparseprop.get_num_threads() == 3


def test_set_num_threads_and_none_restores():
    sparseprop.set_num_threads(1)
    assert sparseprop.get_num_threads() == 1
    torch.set_num_threads(2)
    assert sparseprop.get_num_threads() == 1  # forced: no longer follows torch
    sparseprop.set_num_threads(3)
    assert sparseprop.get_num_threads() == 3
    sparseprop.set_num_threads(None)
    assert sparseprop.get_num_threads() == torch.get_num_threads() == 2


@pytest.mark.parametrize("n", [0, -1, 1.5, 2.0, "2", True, False])
def test_set_num_threads_validation(n):
    sparseprop.set_num_threads(2)
    with pytest.raises(ValueError, match=f"number of threads must be a positive int or None, got {n!r}"):
        sparseprop.set_num_threads(n)
    assert sparseprop.get_num_threads() == 2


def test_more_threads_than_cores_is_fine(isa):
    m = SparseLinear(256, 256, sparsity=0.5)
    x = torch.randn(128, 256)
    sparseprop.set_num_threads(1)
    ref = m(x).detach()
    sparseprop.set_num_threads(64)
    assert torch.equal(m(x).detach(), ref)


def test_concurrent_calls_from_python_threads(isa):
    """The kernels release the GIL and share one thread pool: concurrent callers
    must each get exactly the serial result."""
    sparseprop.set_num_threads(2)
    layers = [SparseLinear(128, 96, sparsity=0.5) for _ in range(4)]
    xs = [torch.randn(200, 128) for _ in range(4)]

    def work(i):
        layers[i].zero_grad(set_to_none=True)
        x = xs[i].clone().requires_grad_()
        y = layers[i](x)
        y.pow(2).sum().backward()
        return y.detach(), x.grad.clone(), layers[i].values.grad.clone()

    serial = [work(i) for i in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            for got, ref in zip(pool.map(work, range(4)), serial):
                for a, b in zip(got, ref):
                    assert torch.equal(a, b)


def test_forked_child_can_run_threaded_kernels():
    """The native pool's threads do not survive fork(); the child must get a fresh
    pool instead of waiting forever on threads that do not exist."""
    code = textwrap.dedent("""
        import os, sys, torch, sparseprop
        torch.set_num_threads(1)
        sparseprop.set_num_threads(2)
        m = sparseprop.SparseLinear(256, 256, sparsity=0.5)
        x = torch.randn(256, 256)
        ref = m(x).detach()  # starts the pool in the parent
        pid = os.fork()
        if pid == 0:
            ok = torch.equal(m(x).detach(), ref)
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        print("child status", os.waitstatus_to_exitcode(status))
        sys.exit(os.waitstatus_to_exitcode(status))
    """)
    proc = run_python(code, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def test_threading_shares_torch_openmp_or_uses_pool():
    """With torch on OpenMP the kernels run on torch's libgomp threads; the pool can be forced."""
    c = sparseprop.config()
    if "OpenMP" in torch.__config__.parallel_info():
        assert "OpenMP" in c["threading"]
    proc = run_python("import sparseprop; print(sparseprop.config()['threading'])",
                      {"SPARSEPROP_THREADING": "pool"})
    assert proc.returncode == 0 and "own thread pool" in proc.stdout
    proc = run_python("import sparseprop", {"SPARSEPROP_THREADING": "bogus"})
    assert proc.returncode != 0 and "SPARSEPROP_THREADING" in proc.stderr


def test_pool_and_openmp_threading_agree_bitwise():
    code = ("import torch, sparseprop; torch.manual_seed(0); sparseprop.set_num_threads(2);"
            "m = sparseprop.SparseLinear(300, 200, sparsity=0.7); x = torch.randn(67, 300, requires_grad=True);"
            "y = m(x); y.square().sum().backward();"
            "torch.save((y.detach(), x.grad, m.values.grad), '{}')")
    import tempfile, os
    with tempfile.TemporaryDirectory() as d:
        paths = [os.path.join(d, f"{mode}.pt") for mode in ("pool", "auto")]
        for mode, path in zip(("pool", "auto"), paths):
            proc = run_python(code.format(path), {"SPARSEPROP_THREADING": mode})
            assert proc.returncode == 0, proc.stderr
        a, b = (torch.load(p) for p in paths)
        assert all(torch.equal(u, v) for u, v in zip(a, b))
