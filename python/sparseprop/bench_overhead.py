"""Deprecated: the per-call overhead benchmark moved to :mod:`sparseprop.benchmarks.overhead`
(run it as ``python -m sparseprop.bench --overhead``). The old names here still work,
with a DeprecationWarning."""
from ._deprecation import moved_names

__getattr__ = moved_names("sparseprop.bench_overhead", {
    name: "sparseprop.benchmarks.overhead" for name in ("measure", "overhead_line")})
