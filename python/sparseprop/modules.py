"""Drop-in sparse layers: SparseLinear for nn.Linear, SparseConv2d for nn.Conv2d."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import nn
import torch.nn.functional as F

from ._sparse_module import SparseWeightModule
from ._validation import check_count as _check_count, check_linear_input, check_storage_dtype
from .conv import ops as conv_ops
from .conv.cache import PlanCache
from .conv.dtypes import conv2d_other_paths
from .conv.entry import sparse_conv2d_spec
from .conv.spec import ConvSpec
from .csr import CSRPattern
from .dense_forms import export_weight
from .linear_fast import try_linear
from .functional import autocast_dtype, sparse_linear, sparse_linear_buffers, use_custom_ops

def _check_factory_kwargs(cls_name: str, device, dtype) -> torch.dtype:
    """The storage dtype of a new layer; raises on a non-CPU device."""
    if device is not None and torch.device(device).type != "cpu":
        raise ValueError(f"{cls_name} runs on the CPU only, got device={device!r}")
    return check_storage_dtype(cls_name, dtype)


class SparseLinear(SparseWeightModule):
    """A drop-in replacement for :class:`torch.nn.Linear` whose weight is sparse (CSR).

    The nonzero weights are one 1-D parameter, ``values``; the pattern lives in
    the buffers ``indptr`` (int64) and ``indices`` (int32), which are saved in
    ``state_dict``. The transposed pattern used by the input gradient is derived
    data of the pattern (``layer.pattern.transposed``), rebuilt whenever the
    pattern changes. Pruned weights do not exist, so no optimizer can make them
    nonzero.

    Args:
        in_features, out_features: as for ``nn.Linear``.
        bias: add a learnable bias.
        sparsity: fraction of zero weights, in [0, 1]; the pattern is uniformly random.
        generator: optional ``torch.Generator`` for the pattern and the initial values.

    Inputs of shape (*, in_features), float32, on the CPU.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 sparsity: float = 0.9, *, generator: Optional[torch.Generator] = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        dtype = _check_factory_kwargs(type(self).__name__, device, dtype)
        self.in_features = _check_count("in_features", in_features)
        self.out_features = _check_count("out_features", out_features)
        self.weight_shape = (out_features, in_features)
        self._init_sparse(sparsity, bias, generator, dtype)

    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: Optional[torch.Tensor] = None,
                   sparsity: Optional[float] = None) -> "SparseLinear":
        """Sparse copy of ``linear``.

        * no mask, no sparsity: keeps the nonzeros of ``linear.weight``;
        * ``mask``: keeps the positions where ``mask`` is nonzero (even a weight
          that happens to be exactly 0 there stays trainable);
        * ``sparsity``: keeps the largest-magnitude weights (within ``mask`` if given)
          so that exactly ``round((1 - sparsity) * numel)`` remain.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_dense expects an nn.Linear, got {type(linear).__name__}")
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, sparsity=1.0,
                     dtype=linear.weight.dtype)
        module._load_dense(linear.weight, linear.bias, mask, sparsity)
        return module

    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` with the same outputs (zeros where the pattern has none)."""
        return self._copy_dense_into(nn.Linear(self.in_features, self.out_features,
                                               bias=self.bias is not None))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, sparsity={self.sparsity:.4f}, nnz={self.nnz}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out = try_linear(self, input)  # the common eager call: one native call per pass
        if out is not None:
            return out
        # Inputs are validated once, by the functional layer (or, when exporting, here).
        if torch.onnx.is_in_onnx_export():
            # ONNX has no op for our kernels: export a dense Gemm with the materialised
            # weight (never a trace of the kernels' output as a constant).
            check_linear_input(input, self.in_features)
            bias = None if self.bias is None else self.bias.to(input.dtype)
            return F.linear(input, export_weight(self).to(input.dtype), bias)
        if use_custom_ops(input):
            # Traced (compile/export/torch.func): hand the raw buffers to the custom ops,
            # which validate and cache the pattern themselves (the `pattern` property's
            # checksum is native code Dynamo cannot trace).
            return sparse_linear_buffers(input, self.indptr, self.indices, self.out_features,
                                         self.in_features, self.values, self.bias)
        return sparse_linear(input, self.pattern, self.values, self.bias)


IntOrPair = Union[int, Tuple[int, int]]


class SparseConv2d(SparseWeightModule):
    """A drop-in replacement for :class:`torch.nn.Conv2d` whose weight is sparse (CSR).

    Same constructor as ``nn.Conv2d`` (kernel size, stride, padding including
    'same'/'valid', dilation, groups, bias, padding_mode) plus ``sparsity``.
    The CSR matrix has one row per output channel and one column per element of
    ``weight[o]`` (in_channels/groups x kH x kW), like ``weight.flatten(1)``.
    Inputs (N, C, H, W) or (C, H, W), float32, CPU, any memory format.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair,
                 stride: IntOrPair = 1, padding: Union[str, IntOrPair] = 0, dilation: IntOrPair = 1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 sparsity: float = 0.9, *, generator: Optional[torch.Generator] = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        dtype = _check_factory_kwargs(type(self).__name__, device, dtype)
        self.spec = ConvSpec.create(in_channels, out_channels, kernel_size, stride, padding,
                                    dilation, groups, padding_mode)
        s = self.spec
        self.in_channels, self.out_channels = s.in_channels, s.out_channels
        self.kernel_size, self.stride, self.dilation = s.kernel_size, s.stride, s.dilation
        self.padding, self.groups, self.padding_mode = s.padding, s.groups, s.padding_mode
        self.weight_shape = (s.out_channels, s.in_channels // s.groups) + s.kernel_size
        self._plans = PlanCache()
        self._spec_key = conv_ops.spec_key(s)  # the spec as the custom op takes it
        self._init_sparse(sparsity, bias, generator, dtype)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, mask: Optional[torch.Tensor] = None,
                   sparsity: Optional[float] = None) -> "SparseConv2d":
        """Sparse copy of ``conv``; ``mask`` and ``sparsity`` as for SparseLinear.from_dense."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"from_dense expects an nn.Conv2d, got {type(conv).__name__}")
        module = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                     conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                     conv.padding_mode, sparsity=1.0, dtype=conv.weight.dtype)
        module._load_dense(conv.weight, conv.bias, mask, sparsity)
        return module

    def to_dense(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` with the same outputs (zeros where the pattern has none)."""
        s = self.spec
        dense = nn.Conv2d(s.in_channels, s.out_channels, s.kernel_size, s.stride, s.padding,
                          s.dilation, s.groups, self.bias is not None, s.padding_mode)
        return self._copy_dense_into(dense)

    def _pattern_installed(self, pattern: CSRPattern) -> None:
        self._plans.clear()  # index plans depend on the pattern

    def __setstate__(self, state):
        super().__setstate__(state)
        self._plans = PlanCache()
        self._spec_key = conv_ops.spec_key(self.spec)

    def extra_repr(self) -> str:
        s = self.spec
        text = (f"{s.in_channels}, {s.out_channels}, kernel_size={s.kernel_size}, stride={s.stride}")
        if s.padding not in ((0, 0), "valid"):
            text += f", padding={s.padding!r}" if isinstance(s.padding, str) else f", padding={s.padding}"
        if s.dilation != (1, 1):
            text += f", dilation={s.dilation}"
        if s.groups != 1:
            text += f", groups={s.groups}"
        if self.bias is None:
            text += ", bias=False"
        if s.padding_mode != "zeros":
            text += f", padding_mode={s.padding_mode!r}"
        return text + f", sparsity={self.sparsity:.4f}, nnz={self.nnz}"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (isinstance(input, torch.Tensor) and input.dtype is not torch.float32
                or self.values.dtype is not torch.float32 or torch.onnx.is_in_onnx_export()
                or autocast_dtype() is not None):
            return conv2d_other_paths(self, input)
        if conv_ops.AVAILABLE and isinstance(input, torch.Tensor) and use_custom_ops(input):
            # Traced (compile/export): one custom op on the raw buffers, as for SparseLinear.
            return torch.ops.sparseprop.conv2d(input, self.values, self.bias, self.indptr,
                                               self.indices, self._spec_key)
        return sparse_conv2d_spec(input, self.spec, self.pattern, self.values, self.bias, self._plans)
