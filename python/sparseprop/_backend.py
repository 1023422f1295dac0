"""Bridge to the native core: ISA choice, thread count, tensor -> buffer checks."""
from __future__ import annotations

import contextlib
import functools
import os
import platform
from typing import Iterator, List, Optional

import numpy as np
import torch

from . import _C
from ._version import __version__

ISA_ENV_VAR = "SPARSEPROP_ISA"
THREADING_ENV_VAR = "SPARSEPROP_THREADING"
_forced_threads: Optional[int] = None


def available_isas() -> List[str]:
    """ISAs this build and this CPU can run, best last (``scalar`` always first)."""
    return list(_C.available_isas())


def known_isas() -> List[str]:
    """Every ISA name the dispatcher knows on any platform (``scalar``, ``avx2``, ``avx512``,
    ``neon``): the list lives in the extension (csrc/dispatch.cc), nowhere else."""
    return list(_C.known_isas())


def kernel_info() -> dict:
    """The kernel registry as the extension reports it.

    ``{"active_isa", "num_threads", "kernels"}``; ``kernels`` has one dict per compiled
    ISA (best last): ``isa``, ``available`` (this CPU runs it), ``vector_width`` (floats
    per SIMD register), ``spmm_block`` / ``sddmm_block`` (vectors per batch block of the
    forward/input-gradient and weight-gradient kernels; a block covers
    ``vector_width * block`` batch columns) and ``batch_tile`` (that product for SpMM).
    """
    kernels = []
    for entry in _C.kernel_info():
        entry = dict(entry)
        entry["batch_tile"] = entry["vector_width"] * entry["spmm_block"]
        kernels.append(entry)
    return {"active_isa": get_isa(), "num_threads": get_num_threads(), "kernels": kernels}


def get_isa() -> str:
    """The ISA whose kernels run now."""
    return _C.active_isa()


def set_isa(name: Optional[str]) -> None:
    """Force a kernel path by name (one of :func:`known_isas`).

    ``None`` or ``"auto"`` returns to the best path this CPU supports. Raises
    ValueError for an unknown name and RuntimeError for a path this CPU or build
    cannot run.
    """
    _C.set_isa("auto" if name is None else str(name).lower())


@contextlib.contextmanager
def use_isa(name: Optional[str]) -> Iterator[None]:
    """Context manager that forces ``name`` and restores the previous path."""
    previous = get_isa()
    set_isa(name)
    try:
        yield
    finally:
        set_isa(previous)


def set_num_threads(n: Optional[int]) -> None:
    """Use ``n`` threads in the sparse kernels from the next call on.

    ``None`` returns to the default, which follows ``torch.get_num_threads()``.
    Results do not depend on the thread count.
    """
    global _forced_threads
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"number of threads must be a positive int or None, got {n!r}")
    _forced_threads = n


def get_num_threads() -> int:
    """Threads the next kernel call will use."""
    return _forced_threads if _forced_threads is not None else torch.get_num_threads()


def config() -> dict:
    """Everything :func:`show_config` prints, as a dict."""
    build = _C.build_info()
    return {
        "version": __version__,
        "active_isa": get_isa(),
        "available_isas": available_isas(),
        "compiled_isas": list(build["compiled_isas"]),
        "isa_forced_by_env": os.environ.get(ISA_ENV_VAR) or None,
        "cpu_features": dict(_C.cpu_features()),
        "num_threads": get_num_threads(),
        "threads_follow_torch": _forced_threads is None,
        "hardware_threads": _C.max_threads(),
        "threading": _threading,
        "compiler": build["compiler"],
        "build_flags": build["flags"].strip(),
        "arch": build["arch"],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "kernels": kernel_info()["kernels"],
    }


def show_config() -> None:
    """Print the kernel path, the available paths, CPU features, threads and build."""
    c = config()
    features = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in c["cpu_features"].items())
    threads = "follows torch.get_num_threads()" if c["threads_follow_torch"] else "set_num_threads"
    lines = [
        f"sparseprop {c['version']} ({c['arch']})",
        f"  active ISA:     {c['active_isa']}"
        + (f" (SPARSEPROP_ISA={c['isa_forced_by_env']})" if c["isa_forced_by_env"] else ""),
        f"  available ISAs: {', '.join(c['available_isas'])}",
        f"  compiled ISAs:  {', '.join(c['compiled_isas'])}",
        f"  CPU features:   {features}",
        "  kernel blocks:  " + ", ".join(
            f"{k['isa']} {k['vector_width']}x{k['spmm_block']}/{k['sddmm_block']}" for k in c["kernels"])
        + " (floats per vector x vectors per SpMM block / per SDDMM block)",
        f"  threads:        {c['num_threads']} ({threads}; {c['hardware_threads']} hardware)",
        f"  threading:      {c['threading']}",
        f"  compiler:       {c['compiler']}  flags: {c['build_flags']}",
        f"  torch {c['torch']}, numpy {c['numpy']}",
    ]
    print("\n".join(lines))


def _loaded_libgomp() -> Optional[str]:
    """Path of the libgomp this process has loaded (torch's own copy), if any."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if "libgomp" in os.path.basename(path) and path.endswith((".so", ".so.1")) or \
                        "libgomp" in os.path.basename(path) and ".so." in path:
                    return path
    except OSError:
        pass
    return None


def _setup_threading() -> str:
    """Share torch's OpenMP threads when torch runs on libgomp (two runtimes would
    spin against each other on a small CPU); otherwise use sparseprop's own pool.
    SPARSEPROP_THREADING=pool forces the pool."""
    import ctypes

    choice = os.environ.get(THREADING_ENV_VAR, "auto").lower()
    if choice not in ("auto", "openmp", "pool"):
        raise RuntimeError(f"{THREADING_ENV_VAR}={choice!r}: expected auto, openmp or pool")
    if choice == "pool" or "OpenMP" not in torch.__config__.parallel_info():
        if choice == "openmp":
            raise RuntimeError(f"{THREADING_ENV_VAR}=openmp but torch does not use OpenMP")
        return "own thread pool"
    path = _loaded_libgomp()
    if path is None:
        if choice == "openmp":
            raise RuntimeError(f"{THREADING_ENV_VAR}=openmp but no libgomp is loaded")
        return "own thread pool"
    lib = ctypes.CDLL(path)
    addresses = [ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
                 for name in ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads")]
    _C.use_openmp_runtime(*addresses)
    return f"torch's OpenMP runtime ({os.path.basename(path)})"


_threading = "own thread pool"


def apply_environment() -> None:
    """At import: set up threading and apply SPARSEPROP_ISA (RuntimeError if unusable)."""
    global _threading
    _threading = _setup_threading()
    value = os.environ.get(ISA_ENV_VAR)
    if value:
        try:
            set_isa(value)
        except (ValueError, RuntimeError) as err:
            raise RuntimeError(f"{ISA_ENV_VAR}={value!r} cannot be used: {err}") from None


def as_numpy(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    """Zero-copy numpy view of a CPU tensor (None passes through)."""
    if t is None:
        return None
    return t.detach().numpy() if t.requires_grad else t.numpy()  # detach costs ~0.5 us


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    """The CPU's model name (for reports, and to key measurements by machine)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        info = ""
    for key in ("model name", "Model", "Hardware", "cpu model", "Processor"):
        for line in info.splitlines():
            k, _, v = line.partition(":")
            if k.strip() == key and v.strip():
                return v.strip()
    return platform.processor() or platform.machine() or "unknown"
