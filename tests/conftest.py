"""Shared fixtures and oracles for the sparseprop test suite.

The oracle for every numerical test is the masked dense ``nn.Linear`` returned by
``SparseLinear.to_dense()``: same weights (zeros off the pattern), same bias.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from typing import Dict, Optional

import pytest
import torch
from torch import nn

# Pruners switch layers to sparse at a measured crossover by default (sparse_from="auto"):
# timing-dependent, so the suite pins the old fixed point, and keeps any measurement it
# does make (tests/test_pruning_switch_point.py) out of the user's ~/.cache.
os.environ.setdefault("SPARSEPROP_SPARSE_FROM", "0.7")
os.environ.setdefault("SPARSEPROP_CACHE_DIR", os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"sparseprop-tests-{os.getpid()}"))

import sparseprop  # noqa: E402
from sparseprop import SparseLinear  # noqa: E402

ISAS = sparseprop.available_isas()
# Anything that the dispatcher knows by name but cannot run here (e.g. 'neon' on x86).
KNOWN_ISAS = tuple(sparseprop.known_isas())  # the extension's list
UNAVAILABLE_ISAS = [name for name in KNOWN_ISAS if name not in ISAS]

# Under AddressSanitizer (tests/cpp/run_sanitized.sh preloads it) freed memory sits in
# ASan's quarantine and malloc_trim does nothing, so RSS says nothing about our pool.
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")
needs_plain_allocator = pytest.mark.skipif(
    UNDER_ASAN, reason="RSS bounds need the plain allocator; ASan quarantines freed memory")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run only when asked for (``-m slow``): the default run is CI's."""
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def seeded_rng():
    """Every test starts from the same RNG state, so failures reproduce."""
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Tiny models: one thread is faster (and avoids thread-pool stalls on busy machines);
    restore_global_state puts the thread count back. Pruning tests use it for every test
    (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def restore_global_state():
    """Undo any ISA / thread / torch-thread change a test makes, even on failure."""
    isa = sparseprop.get_isa()
    torch_threads = torch.get_num_threads()
    yield
    sparseprop.set_num_threads(None)
    torch.set_num_threads(torch_threads)
    sparseprop.set_isa(isa)


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test once per kernel path this CPU can execute, forced via use_isa."""
    with sparseprop.use_isa(request.param):
        assert sparseprop.get_isa() == request.param
        yield request.param


@pytest.fixture
def gen():
    g = torch.Generator()
    g.manual_seed(1234)
    return g


def dense_reference(module: SparseLinear) -> nn.Linear:
    """The masked dense twin of ``module`` (independent parameters, same values)."""
    dense = module.to_dense()
    assert isinstance(dense, nn.Linear)
    return dense


def make_linear(in_features: int, out_features: int, bias: bool = True, sparsity: float = 0.9,
                generator: Optional[torch.Generator] = None) -> SparseLinear:
    """SparseLinear, built without going through ``bias=False`` in the constructor.

    ``SparseLinear(..., bias=False)`` itself is covered by dedicated tests; this
    helper keeps the bias-free kernel path testable on its own (setting a
    registered parameter to None is the standard nn.Module way to drop it).
    """
    m = SparseLinear(in_features, out_features, bias=True, sparsity=sparsity, generator=generator)
    if not bias:
        m.bias = None
    return m


def tol(reduction_length: int) -> Dict[str, float]:
    """assert_close tolerances for float32 sums of ``reduction_length`` O(1) terms."""
    return dict(rtol=1e-4, atol=1e-4 * math.sqrt(max(1, reduction_length)))


def outputs(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """m(x) without autograd, as a tensor no later call can overwrite."""
    with torch.no_grad():
        return m(x).clone()


def assert_same_sparse_module(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    """Two SparseLinear / SparseConv2d layers hold the same pattern, values and bias and
    give bitwise the same output on ``x``."""
    assert torch.equal(a.indptr, b.indptr) and torch.equal(a.indices, b.indices)
    assert torch.equal(a.values.detach(), b.values.detach())
    if a.bias is None:
        assert b.bias is None
    else:
        assert torch.equal(a.bias.detach(), b.bias.detach())
    assert torch.equal(outputs(a, x), outputs(b, x))


def clone_input(x: torch.Tensor) -> torch.Tensor:
    """A leaf copy of ``x`` with the same requires_grad, for the dense twin."""
    return x.detach().clone().requires_grad_(x.requires_grad)


def compare_with_dense(module: nn.Module, x: torch.Tensor, grad_out: Optional[torch.Tensor] = None,
                       dense: Optional[nn.Module] = None, what: str = "") -> None:
    """Forward + backward through a SparseLinear / SparseConv2d ``module`` and its dense
    twin (``to_dense()``); check everything.

    ``x`` may be any view (non-contiguous, misaligned...); the dense twin gets a
    contiguous copy. Checks output, input gradient, values gradient (dense weight
    gradient gathered at the pattern) and bias gradient.
    """
    dense = module.to_dense() if dense is None else dense
    module.zero_grad(set_to_none=True)
    dense.zero_grad(set_to_none=True)
    xd = clone_input(x)
    y = module(x)
    yd = dense(xd)
    assert y.shape == yd.shape, what
    assert y.dtype == torch.float32
    rows, cols = module.pattern_shape  # forward sums over cols; input grad over the rest
    to_input = math.prod(module.weight_shape) // module.weight_shape[1]
    n_batch = max(1, yd.numel() // rows)  # weight-gradient terms per entry
    torch.testing.assert_close(y, yd, **tol(cols), msg=lambda m: f"output {what}: {m}")
    if grad_out is None:
        grad_out = torch.randn_like(yd)
    y.backward(grad_out)
    yd.backward(grad_out)
    if x.requires_grad:
        torch.testing.assert_close(x.grad, xd.grad, **tol(to_input),
                                   msg=lambda m: f"input grad {what}: {m}")
    values_grad = module.values.grad
    assert values_grad is not None and values_grad.shape == module.values.shape
    expected = module.pattern.gather(dense.weight.grad.flatten(1))
    torch.testing.assert_close(values_grad, expected, **tol(n_batch),
                               msg=lambda m: f"values grad {what}: {m}")
    if module.bias is not None:
        torch.testing.assert_close(module.bias.grad, dense.bias.grad, **tol(n_batch),
                                   msg=lambda m: f"bias grad {what}: {m}")


def run_python(code: str, env_updates: Optional[Dict[str, Optional[str]]] = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (for import-time behaviour and crashes)."""
    env = dict(os.environ)
    env.pop("SPARSEPROP_ISA", None)
    for key, value in (env_updates or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=timeout)
