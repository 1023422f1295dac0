"""A convolution's hyper-parameters (ConvSpec), its output size, and the one check of a
call's arguments: every entry point (SparseConv2d, the functional form, the dtype paths,
the custom op) validates through :func:`check_call` once, at the public boundary; what
runs after it (plans, kernels) trusts its arguments."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

from .._validation import check_float_cpu
from ..csr import CSRPattern

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
FLOAT32 = (torch.float32,)


def _pair(value, name: str, minimum: int) -> Tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    else:
        try:
            pair = tuple(value)
        except TypeError:
            pair = ()
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in pair):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


@dataclass(frozen=True)
class ConvSpec:
    """Validated nn.Conv2d hyper-parameters."""

    in_channels: int
    out_channels: int
    kernel_size: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Union[str, Tuple[int, int]]
    dilation: Tuple[int, int]
    groups: int
    padding_mode: str

    @classmethod
    def create(cls, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
               padding_mode) -> "ConvSpec":
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        kernel = _pair(kernel_size, "kernel_size", 1)
        stride_ = _pair(stride, "stride", 1)
        dilation_ = _pair(dilation, "dilation", 1)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be 'same', 'valid', an int or a pair, got {padding!r}")
            if padding == "same" and stride_ != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            padding_ = padding
        else:
            padding_ = _pair(padding, "padding", 0)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        return cls(in_channels, out_channels, kernel, stride_, padding_, dilation_, groups, padding_mode)

    @property
    def pattern_cols(self) -> int:
        """Columns of the CSR pattern: one per element of ``weight[o]`` (in/groups x kH x kW)."""
        return self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]

    def pads(self) -> Tuple[int, int, int, int]:
        """(top, bottom, left, right) zero padding."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            th = self.dilation[0] * (self.kernel_size[0] - 1)
            tw = self.dilation[1] * (self.kernel_size[1] - 1)
            return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        ph, pw = self.padding
        return (ph, ph, pw, pw)


def output_size(spec: ConvSpec, h: int, w: int, pads: Tuple[int, int, int, int]) -> Tuple[int, int]:
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel_size, spec.stride, spec.dilation
    hp, wp = h + pads[0] + pads[1], w + pads[2] + pads[3]
    oh, ow = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"the kernel (size {spec.kernel_size}, dilation {spec.dilation}) is larger "
                         f"than the padded input ({hp}, {wp})")
    return oh, ow


def check_call(spec: ConvSpec, input: torch.Tensor, pattern: CSRPattern, values: torch.Tensor,
               bias: Optional[torch.Tensor], dtypes=FLOAT32) -> None:
    """Raise a clear exception unless ``input``, ``values`` and ``bias`` are CPU tensors of
    ``dtypes`` whose shapes fit ``spec`` and ``pattern``. The eager kernels take float32
    only (the default); the dtype paths pass their wider set."""
    check_float_cpu(input, "input", dtypes)
    check_float_cpu(values, "values", dtypes)
    if bias is not None:
        check_float_cpu(bias, "bias", dtypes)
        if bias.shape != (spec.out_channels,):
            raise ValueError(f"bias must have shape ({spec.out_channels},), got {tuple(bias.shape)}")
    expected_cols = spec.in_channels // spec.groups * spec.kernel_size[0] * spec.kernel_size[1]
    if pattern.shape != (spec.out_channels, expected_cols):
        raise ValueError(f"pattern shape {pattern.shape} does not match the convolution "
                         f"({spec.out_channels}, {expected_cols})")
    if values.shape != (pattern.nnz,):
        raise ValueError(f"values must have shape ({pattern.nnz},), got {tuple(values.shape)}")
    if input.dim() not in (3, 4) or input.shape[-3] != spec.in_channels:
        raise ValueError(f"expected input of shape (N, {spec.in_channels}, H, W) or "
                         f"({spec.in_channels}, H, W), got {tuple(input.shape)}")


def spec_for_pattern(input: torch.Tensor, pattern: CSRPattern, stride=1, padding=0, dilation=1,
                     groups: int = 1, kernel_size=None) -> ConvSpec:
    """The ConvSpec of a functional call: channels from the input and the pattern,
    ``kernel_size`` (when not given) the square kernel the pattern's width implies."""
    if not isinstance(pattern, CSRPattern):
        raise TypeError(f"pattern must be a sparseprop.CSRPattern, got {type(pattern).__name__}")
    if input.dim() not in (3, 4):
        raise ValueError(f"expected a 3-D or 4-D input, got shape {tuple(input.shape)}")
    in_channels = input.shape[-3]
    if kernel_size is None:
        if in_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels}")
        taps = pattern.cols // max(in_channels // groups, 1)
        k = math.isqrt(taps)
        if k * k != taps or taps * (in_channels // groups) != pattern.cols:
            raise ValueError("cannot infer a square kernel_size from the pattern; pass kernel_size")
        kernel_size = k
    return ConvSpec.create(in_channels, pattern.rows, kernel_size, stride, padding, dilation, groups,
                           "zeros")
