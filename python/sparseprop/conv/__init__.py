"""Sparse 2-D convolution on the CSR kernels.

One call path: ``SparseConv2d`` (or :func:`sparse_conv2d`) -> :func:`sparse_conv2d_spec`
(entry.py: the call checked once, spec.py) -> the plan for this input shape from the
layer's :class:`PlanCache` (cache.py), built on a miss in the layout :func:`pick_layout`
chooses (choice.py) -> :class:`SparseConv2dFn` (function.py), which runs the plan's
``forward`` / ``backward``. The plans share one interface (:class:`ConvPlan`, plans.py),
one type per data layout:

* ``"batch"`` (:class:`BatchPlan`, batch.py): stride phases stored batch-innermost; the
  output stays CHWN-strided (chwn.py), which :class:`LayoutBatchNorm2d` (batchnorm.py)
  and the next sparse convolution read without a transpose;
* ``"width"`` (:class:`WidthPlan`, width.py): native NCHW, vectorized along output rows.

``set_layout("batch" | "width" | "auto")`` forces a layout. Beyond plain float32 calls:
dtypes.py (float64, bf16/fp16, autocast, ONNX) and ops.py (the torch.library custom op
that torch.compile / torch.export trace).

``set_strategy``, ``pick_strategy`` and ``STRATEGIES`` are the deprecated old names of
``set_layout``, ``pick_layout`` and ``LAYOUTS``.
"""
from __future__ import annotations

import warnings

from .batch import (BatchPlan, from_phases, grad_operand, make_plan, nchw, phase_layout,
                    to_phases)
from .batchnorm import LayoutBatchNorm2d, layout_resident_batchnorms, plain_batchnorms
from .cache import PlanCache
from .choice import LAYOUTS, get_layout, pick_layout, pick_strategy, set_layout, set_strategy
from .chwn import (chwn_data, chwn_output, chwn_view, from_phases_chwn, is_chwn, padded_chwn,
                   phases_chwn, subsample_chwn, to_chwn)
from .entry import sparse_conv2d, sparse_conv2d_spec
from .function import SparseConv2dFn
from .plans import ConvPlan, PhaseTaps, phase_taps
from .spec import ConvSpec, check_call, output_size
from .width import WidthPlan, make_width_plan

SparseConv2dWidthFn = SparseConv2dFn  # the width layout's former Function: same arguments

__all__ = [
    # the call, its spec and its plans
    "ConvSpec", "check_call", "output_size", "sparse_conv2d", "sparse_conv2d_spec",
    "PlanCache", "ConvPlan", "BatchPlan", "WidthPlan", "SparseConv2dFn",
    # the layout choice
    "LAYOUTS", "get_layout", "pick_layout", "set_layout",
    # CHWN-strided activations and the BatchNorm that keeps them
    "LayoutBatchNorm2d", "layout_resident_batchnorms", "plain_batchnorms", "is_chwn",
    "chwn_view", "to_chwn",
    # plan building blocks (the former conv.py's names)
    "PhaseTaps", "phase_taps", "make_plan", "make_width_plan", "phase_layout", "nchw",
    "to_phases", "from_phases", "grad_operand", "chwn_data", "chwn_output", "from_phases_chwn",
    "padded_chwn", "phases_chwn", "subsample_chwn",
    # old names: set_strategy / pick_strategy (and STRATEGIES, through __getattr__ below) warn
    "set_strategy", "pick_strategy", "SparseConv2dWidthFn",
]


def __getattr__(name: str):
    if name == "STRATEGIES":
        warnings.warn("sparseprop.conv.STRATEGIES is deprecated, use sparseprop.conv.LAYOUTS "
                      "(same values: 'layout' is the one name for the choice)",
                      DeprecationWarning, stacklevel=2)
        return LAYOUTS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
