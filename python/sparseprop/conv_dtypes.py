"""SparseConv2d beyond float32 inputs: ONNX export, float64, bf16/fp16 and autocast.

The native conv kernels compute in float32. Under CPU autocast (like ``nn.Conv2d``)
the layer computes in float32 and returns the autocast dtype; bfloat16/float16
inputs outside autocast compute in float32 and return the input's dtype; float64
takes a dense correctness path (dense_forms.conv2d_float64); ONNX export emits a
dense Conv on the materialised weight.
"""
from __future__ import annotations

import torch

from . import dense_forms
from .conv import sparse_conv2d_spec
from ._validation import check_float_cpu
from .functional import compute_dtypes


def conv2d_other_paths(module, input: torch.Tensor) -> torch.Tensor:
    """``module(input)`` for a SparseConv2d when the input is not a plain float32 call."""
    check_float_cpu(input, "input")
    if torch.onnx.is_in_onnx_export():
        weight = dense_forms.export_weight(module).to(input.dtype)
        bias = None if module.bias is None else module.bias.to(input.dtype)
        return dense_forms.conv2d(module.spec, input, weight, bias)
    compute, result = compute_dtypes(input, module.values, module.bias)
    if compute == torch.float64:
        return dense_forms.conv2d_float64(module, input)
    values, bias = module.values.float(), module.bias
    bias = None if bias is None else bias.float()
    with torch.autocast("cpu", enabled=False):
        out = sparse_conv2d_spec(input.float(), module.spec, module.pattern, values, bias,
                                 module._plans)
    return out if out.dtype == result else out.to(result)
