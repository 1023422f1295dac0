"""Deprecated: the convolution and ResNet-18 benchmarks moved to :mod:`sparseprop.benchmarks`
(``conv``, ``conv_layers``, ``resnet``, ``resnet_profile``; the command lines to ``cli``).
Run them as ``python -m sparseprop.bench --conv`` / ``--resnet18``. The old names here
still work, with a DeprecationWarning."""
from ._deprecation import moved_names

_PKG = "sparseprop.benchmarks."
__getattr__ = moved_names("sparseprop.bench_conv", {
    **{name: _PKG + "cli" for name in (
        "main_conv", "main_resnet18", "build_conv_parser", "build_resnet18_parser",
        "DEFAULT_LAYERS", "DEFAULT_CONV_BATCHES", "DEFAULT_CONV_SPARSITIES", "QUICK_LAYERS",
        "QUICK_CONV_BATCHES", "QUICK_CONV_SPARSITIES", "DEFAULT_STEP_BATCHES",
        "DEFAULT_STEP_SPARSITIES", "QUICK_STEP_BATCHES", "QUICK_STEP_SPARSITIES")},
    **{name: _PKG + "conv_layers" for name in ("ConvLayer", "PRESET_LAYERS", "LAYER_GROUPS",
                                               "parse_layers")},
    **{name: _PKG + "conv" for name in ("ConvResult", "bench_conv_config", "layout_used")},
    "CONV_TABLE": _PKG + "conv:TABLE",
    "conv_cells": _PKG + "conv:cells",
    "check_conv": _PKG + "checks:max_rel_error",
    "write_rows_csv": _PKG + "output",
    **{name: _PKG + "resnet" for name in ("StepResult", "make_train_step", "bench_resnet18_step",
                                          "STEP_TABLE", "BREAKDOWN_TABLE", "step_cells",
                                          "breakdown_cells")},
    **{name: _PKG + "resnet_profile" for name in ("profile_step", "op_self_ms",
                                                  "ops_table_lines")},
})
