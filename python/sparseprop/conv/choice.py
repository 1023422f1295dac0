"""Which data layout a convolution runs in: ``set_layout`` (the process-wide setting) and
``pick_layout`` (the "auto" rule). ``set_strategy`` / ``pick_strategy`` are the old names
of the same two functions (deprecated: "layout" is the one name now)."""
from __future__ import annotations

import warnings

LAYOUTS = ("auto", "batch", "width")
_layout = "auto"  # the choice of set_layout, read by pick_layout on every call


def set_layout(name: str) -> str:
    """Choose the data layout of sparse convolutions; returns the previous choice.

    * ``"batch"``: the batch-innermost phase layout (an NCHW input is transposed in; the
      output stays CHWN-strided, see :mod:`sparseprop.conv.chwn`),
    * ``"width"``: the native NCHW layout, vectorized along output rows (:mod:`sparseprop.conv.width`),
    * ``"auto"`` (default): per call, whichever measured faster (see :func:`pick_layout`).
    """
    global _layout
    if name not in LAYOUTS:
        raise ValueError(f"conv layout must be one of {LAYOUTS}, got {name!r}")
    previous, _layout = _layout, name
    return previous


def get_layout() -> str:
    """The current choice of :func:`set_layout`."""
    return _layout


def pick_layout(spec, batch: int, out_width: int, chwn_input: bool = False) -> str:
    """The layout for a convolution of this spec and input; "auto" follows measurements
    (``python -m sparseprop.bench --conv --layout batch,width``). The width layout wins
    at batch 1 (the batch layout's vectors are then one row long) and, for stride 1,
    where its junk columns ((kW - 1) * dilation per padded row) are under a tenth of
    the work (3x3 on 32x32: 6%; on 16x16: 11%), for 1x1 kernels (no junk, no copies)
    and depthwise ones (so few weights that the batch layout's transposes dominate).
    Strided convolutions at batch 8 and up ran 20-50% faster in the batch layout. An
    input that is already CHWN-strided (a batch-layout conv's output) takes the batch
    layout whenever batch > 1: it then needs no transpose at all."""
    if _layout != "auto":
        return _layout
    if batch == 1:
        return "width"
    if chwn_input:
        return "batch"  # the input is already in the batch layout: no transpose either way
    if spec.stride != (1, 1):
        return "batch"
    junk = spec.dilation[1] * (spec.kernel_size[1] - 1)
    depthwise = spec.groups == spec.in_channels
    return "width" if junk == 0 or depthwise or 10 * junk < out_width + junk else "batch"


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"sparseprop.conv.{old} is deprecated, use sparseprop.conv.{new} (same "
                  f"meaning: 'layout' is the one name for the choice)", DeprecationWarning,
                  stacklevel=3)


def set_strategy(name: str) -> str:
    """Deprecated alias of :func:`set_layout`."""
    _deprecated("set_strategy", "set_layout")
    if name not in LAYOUTS:  # the old message, for code that matches it
        raise ValueError(f"conv strategy must be one of {LAYOUTS}, got {name!r}")
    return set_layout(name)


def pick_strategy(spec, batch: int, out_width: int, chwn_input: bool = False) -> str:
    """Deprecated alias of :func:`pick_layout`."""
    _deprecated("pick_strategy", "pick_layout")
    return pick_layout(spec, batch, out_width, chwn_input)
