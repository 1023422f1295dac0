"""Where a layer should switch to the sparse kernels: the sparsity at which its sparse
training step (forward + backward) costs what the dense one does, on this machine.

The kernels' cost is close to linear in the kept weights, ``t(d) = a + b * d`` at density
``d``, while the dense layer's is a constant ``T``. Timing the layer's own shape and batch
dense and at two densities gives ``a``, ``b`` and ``T``; the switch point is the
sparsity ``1 - (T - a) / b`` where the line crosses ``T``. The probe is the layer's shape
with at most 2048 output rows (128 channels and 16 images for a convolution; a thinner
slice times per-call overhead more than arithmetic: 1024 rows of a 4096x4096 layer
read 0.66-0.70 where the whole layer reads 0.58), so it costs a few dense steps of
the layer, once: results are cached in the process and in
``~/.cache/sparseprop/switch_points.json`` (``SPARSEPROP_CACHE_DIR`` moves it), keyed by
shape, batch, ISA, threads and CPU model. A measurement whose repeats disagree by more than 30% (a
busy machine) is used but not written to the file.

The point is kept in ``[0.5, 0.99]``: below 50% sparsity CSR (4-byte value + 4-byte
index per kept weight) would use more memory than the dense weight. The environment
variable ``SPARSEPROP_SPARSE_FROM=0.7`` (a number) pins every switch point instead.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from .._backend import cpu_model, get_isa, get_num_threads
from ..module_tree import empty_sparse_twin
from ._fast_pattern import gather_pattern, pattern_of_mask

__all__ = ["switch_point", "FLOOR", "CEILING", "FALLBACK", "clear_switch_point_cache"]

FLOOR, CEILING = 0.5, 0.99
FALLBACK = 0.7  # before a layer has seen an input (its batch is unknown)
_PROBE_ROWS = 2048
_PROBE_CHANNELS = 128
_PROBE_IMAGES = 16
_DENSITIES = (0.4, 0.1)
_REPEATS = 3
_NOISY = 1.3  # slowest / fastest repeat of one configuration above this: do not persist
_VERSION = 1
_memory: Dict[str, float] = {}


def _cache_path() -> str:
    folder = os.environ.get("SPARSEPROP_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "sparseprop")
    return os.path.join(folder, "switch_points.json")


def _pinned() -> Optional[float]:
    text = os.environ.get("SPARSEPROP_SPARSE_FROM")
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"SPARSEPROP_SPARSE_FROM must be a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"SPARSEPROP_SPARSE_FROM must be in [0, 1], got {text!r}")
    return value


def clear_switch_point_cache(disk: bool = False) -> None:
    """Forget the measured switch points (in this process; with ``disk=True`` also the file)."""
    _memory.clear()
    if disk:
        try:
            os.remove(_cache_path())
        except FileNotFoundError:
            pass


def _probe_modules(module: nn.Module, input_shape: Sequence[int],
                   device: str = "cpu") -> Tuple[nn.Module, Tuple[int, ...]]:
    """A dense slice of ``module`` (same kind, fewer outputs) and its probe input shape
    (on the ``meta`` device it only describes the probe: no weights are drawn)."""
    if isinstance(module, nn.Linear) or hasattr(module, "in_features"):
        n_in, n_out = module.in_features, module.out_features
        rows = max(1, math.prod(input_shape[:-1]))
        return nn.Linear(n_in, min(n_out, _PROBE_ROWS), device=device), (rows, n_in)
    groups = module.groups
    out = module.out_channels if groups > 1 else min(module.out_channels, _PROBE_CHANNELS)
    shape = tuple(input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    shape = (min(shape[0], _PROBE_IMAGES),) + shape[1:]
    padding = module.padding
    dense = nn.Conv2d(module.in_channels, out, module.kernel_size, module.stride, padding,
                      module.dilation, groups, module.bias is not None, module.padding_mode,
                      device=device)
    return dense, shape


def _key(module: nn.Module, probe: nn.Module, shape: Tuple[int, ...]) -> str:
    if isinstance(probe, nn.Linear):
        what = f"linear {probe.in_features}x{module.out_features}"
    else:
        what = (f"conv {module.in_channels}>{module.out_channels} k{tuple(module.kernel_size)} "
                f"s{tuple(module.stride)} p{module.padding} d{tuple(module.dilation)} "
                f"g{module.groups}")
    # The CPU's name too: the measured crossover belongs to this machine (VMs change CPUs).
    return f"v{_VERSION} {what} in{tuple(shape)} {get_isa()} t{get_num_threads()} {cpu_model()}"


def _step_time(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> float:
    start = time.perf_counter()
    # A scalar loss, not out.backward(grad): torch imports sympy (~0.4 s) the first time
    # a backward is given explicit gradients, which a training loop never pays.
    (module(x) * grad).sum().backward()
    return time.perf_counter() - start


def _measure(probe: nn.Module, shape: Tuple[int, ...]) -> Tuple[float, bool]:
    """``(switch point, steady)``: steady is False when the repeats disagree (noise)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).requires_grad_(True)
    with torch.no_grad():
        grad = torch.randn(probe(x).shape, generator=gen)
    sparse = []
    for density in _DENSITIES:  # random positions at about that density (timing only)
        twin = empty_sparse_twin(probe, probe.bias is not None)
        mask = torch.rand(probe.weight.shape, generator=gen) < density
        pattern = pattern_of_mask(mask, twin.pattern_shape)
        twin.set_pattern(pattern, gather_pattern(pattern)(probe.weight))
        sparse.append(twin)
    modules = [probe] + sparse
    times = [[] for _ in modules]
    for m in modules:  # warm up (plans, scratch buffers, first-touch pages)
        _step_time(m, x, grad)
    for _ in range(_REPEATS):  # interleaved; the minimum drops other processes' noise
        for i, m in enumerate(modules):
            times[i].append(_step_time(m, x, grad))
    steady = all(max(t) <= _NOISY * min(t) for t in times)
    dense, t_hi, t_lo = (min(t) for t in times)
    (d_hi, d_lo) = _DENSITIES
    slope = (t_hi - t_lo) / (d_hi - d_lo)
    if slope <= 0:  # noise swamped the difference: decide by the sparser probe alone
        return (FLOOR if t_lo < dense else CEILING), False
    density = (dense - (t_lo - slope * d_lo)) / slope
    return min(CEILING, max(FLOOR, 1.0 - density)), steady


def _load_disk() -> Dict[str, float]:
    try:
        with open(_cache_path()) as f:
            data = json.load(f)
        return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError, TypeError):
        return {}


def _save_disk(key: str, value: float) -> None:
    path = _cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = _load_disk()
        data[key] = value
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=0, sort_keys=True)
        os.replace(tmp, path)  # atomic: concurrent runs never read half a file
    except OSError:
        pass  # a read-only home only costs a new measurement next run


def switch_point(module: nn.Module, input_shape: Optional[Sequence[int]]) -> float:
    """The sparsity from which ``module`` (an ``nn.Linear`` / ``nn.Conv2d`` or its sparse
    twin) trains faster on the sparse kernels, for inputs of ``input_shape`` (``None``:
    not known yet, :data:`FALLBACK`). Measured once per shape, batch, ISA and threads."""
    pinned = _pinned()
    if pinned is not None:
        return pinned
    if input_shape is None:
        return FALLBACK
    # The key from a meta-device probe: a cache hit draws no 2048-row weight (~40 ms).
    key = _key(module, *_probe_modules(module, input_shape, "meta"))
    if key not in _memory:
        disk = _load_disk()
        if key in disk:
            _memory[key] = disk[key]
        else:
            probe, shape = _probe_modules(module, input_shape)
            with torch.enable_grad():
                _memory[key], steady = _measure(probe, shape)
            if steady:
                _save_disk(key, _memory[key])
    return _memory[key]


def resolve_sparse_from(sparse_from, module: nn.Module, input_shape: Optional[Sequence[int]],
                        sparsity: float) -> Optional[float]:
    """A pruner's ``sparse_from`` for one layer about to be ``sparsity`` sparse: a number
    or ``None`` as given; ``"auto"`` the layer's :func:`switch_point` (not measured when
    ``sparsity`` lies outside ``[FLOOR, CEILING)``, where the answer is known)."""
    if not isinstance(sparse_from, str):
        return sparse_from
    pinned = _pinned()
    if pinned is not None:
        return pinned
    if sparsity < FLOOR:
        return FLOOR
    if sparsity >= CEILING:
        return CEILING
    return switch_point(module, input_shape)
