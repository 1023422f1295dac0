"""SparseConv2d beyond float32 inputs: ONNX export, float64, bf16/fp16 and autocast.

The native conv kernels compute in float32. Under CPU autocast (like ``nn.Conv2d``)
the layer computes in float32 and returns the autocast dtype; bfloat16/float16
inputs outside autocast compute in float32 and return the input's dtype; float64
takes a dense correctness path (dense_forms.conv2d_float64); ONNX export emits a
dense Conv on the materialised weight.
"""
from __future__ import annotations

import torch

from .. import dense_forms
from .._validation import FLOAT_DTYPES, check_float_cpu
from ..functional import compute_dtypes
from .entry import run_conv2d
from .spec import check_call


def conv2d_other_paths(module, input: torch.Tensor) -> torch.Tensor:
    """``module(input)`` for a SparseConv2d when the input is not a plain float32 call."""
    if torch.onnx.is_in_onnx_export():
        # Exporters may run this on fake parameters and buffers: check the input only
        # (the pattern is read from the module's own validated arrays).
        check_float_cpu(input, "input")
        weight = dense_forms.export_weight(module).to(input.dtype)
        bias = None if module.bias is None else module.bias.to(input.dtype)
        return dense_forms.conv2d(module.spec, input, weight, bias)
    spec, pattern, values, bias = module.spec, module.pattern, module.values, module.bias
    check_call(spec, input, pattern, values, bias, FLOAT_DTYPES)  # the one check of this call
    compute, result = compute_dtypes(input, values, bias)
    if compute == torch.float64:
        return dense_forms.conv2d_float64(module, input)
    values = values.float()
    bias = None if bias is None else bias.float()
    with torch.autocast("cpu", enabled=False):
        out = run_conv2d(input.float(), spec, pattern, values, bias, module._plans)
    return out if out.dtype == result else out.to(result)
