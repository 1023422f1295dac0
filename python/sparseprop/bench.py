"""``python -m sparseprop.bench`` (or the ``sparseprop-bench`` console script): dense
PyTorch layers against sparseprop's, forward, backward and forward+backward.

``--help`` lists the options, ``--quick`` is a seconds-long smoke run; ``--conv``
(convolution layers) and ``--resnet18`` (a whole training step) take options of their
own (``--conv --help``). The benchmarks live in :mod:`sparseprop.benchmarks`; this
module is the entry point, and keeps the reusable timer importable from here::

    from sparseprop.bench import time_interleaved

Its other old names (``Result``, ``bench_config``, ``header_lines``, ...) still work,
with a DeprecationWarning naming their new module.
"""
from __future__ import annotations

import sys

from ._backend import cpu_model
from ._deprecation import moved_names
from ._timing import Timed, time_interleaved, time_interleaved_samples
from .benchmarks.cli import main

__all__ = ["Timed", "cpu_model", "main", "time_interleaved", "time_interleaved_samples"]

_CLI = "sparseprop.benchmarks.cli"
_LINEAR = "sparseprop.benchmarks.linear"
__getattr__ = moved_names("sparseprop.bench", {
    **{name: _CLI for name in ("build_parser", "DEFAULT_SHAPES", "DEFAULT_BATCHES",
                               "DEFAULT_SPARSITIES", "QUICK_SHAPES", "QUICK_BATCHES",
                               "QUICK_SPARSITIES")},
    **{name: _LINEAR for name in ("Result", "make_layers", "bench_config", "COLUMNS",
                                  "plain_header", "plain_row", "markdown_table", "write_csv")},
    "PassRatios": "sparseprop.benchmarks.passes",
    "header_lines": "sparseprop.benchmarks.output",
    "run_settings": "sparseprop.benchmarks.settings",
    "write_plot": "sparseprop.benchmarks.plot",
})

if __name__ == "__main__":
    sys.exit(main())
