"""pytest configuration for the benchmark suites in bench/.

pyproject.toml's addopts has ``--benchmark-disable`` (so ordinary test runs never
time anything), and pytest-benchmark refuses ``--benchmark-only`` together with
``--benchmark-disable``. Here ``--benchmark-only`` turns timing back on, so
``python -m pytest bench/ --benchmark-only`` works as well as the explicit
``python -m pytest bench/ --benchmark-enable --benchmark-only``.

Every suite runs torch and sparseprop on the same number of threads
(``SPARSEPROP_BENCH_THREADS``, or torch's default).
"""
from __future__ import annotations

import os
import platform

import pytest
import torch


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's own pytest_configure reads the options
def pytest_configure(config):
    opt = config.option
    if getattr(opt, "benchmark_only", False) and getattr(opt, "benchmark_disable", False):
        opt.benchmark_enable = True


@pytest.fixture(scope="session", autouse=True)
def _same_threads():
    """torch and sparseprop use the same number of threads (SPARSEPROP_BENCH_THREADS or torch's)."""
    import sparseprop

    before = torch.get_num_threads()
    value = os.environ.get("SPARSEPROP_BENCH_THREADS")
    n = int(value) if value else before
    torch.set_num_threads(n)
    sparseprop.set_num_threads(n)
    yield
    torch.set_num_threads(before)
    sparseprop.set_num_threads(None)


def pytest_report_header(config):
    try:
        import sparseprop
    except ImportError as err:  # let collection report it properly
        return f"sparseprop: not importable ({err})"
    try:
        from sparseprop.bench import cpu_model
        cpu = cpu_model()
    except ImportError:
        cpu = platform.processor() or platform.machine()
    return (f"sparseprop {sparseprop.__version__}: ISA {sparseprop.get_isa()} "
            f"(available {', '.join(sparseprop.available_isas())}); CPU {cpu}; "
            f"torch {torch.__version__}; threads {os.environ.get('SPARSEPROP_BENCH_THREADS') or torch.get_num_threads()}")
