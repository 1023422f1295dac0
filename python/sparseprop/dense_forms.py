"""Sparse layers computed with dense torch ops, for the two cases the native kernels
do not serve:

* ONNX export: ONNX has no op for the kernels, so a sparse layer exports as the dense
  op (Gemm/MatMul, Conv) on its weight, materialised in the graph by one scatter of
  ``values`` at the pattern's flat positions (a constant). Both the legacy (TorchScript)
  and the dynamo exporter trace this; never the kernels' output baked in as a constant.
* SparseConv2d in float64 (a correctness path, e.g. for ``torch.autograd.gradcheck``):
  ``F.conv2d`` on the dense weight, differentiable in input, values and bias.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .csr import CSRPattern


def _flat_positions(module) -> torch.Tensor:
    """Row-major positions of the pattern's nonzeros in the dense (rows, cols) weight.

    Computed with numpy from the module's validated pattern (its private arrays are
    real tensors even while an exporter runs the forward on fake parameters), so the
    exporter sees a constant."""
    p: CSRPattern = module._pattern
    p.expect_current()
    cached = getattr(module, "_export_positions", None)
    if cached is not None and cached[0] is p:
        return cached[1]
    indptr, indices = p.numpy()
    rows = np.repeat(np.arange(p.rows, dtype=np.int64), np.diff(indptr))
    positions = torch.from_numpy(rows * p.cols + indices.astype(np.int64))
    module._export_positions = (p, positions)
    return positions


def export_weight(module) -> torch.Tensor:
    """The dense weight of ``module`` (shape ``module.weight_shape``), as traceable ops
    on ``module.values``."""
    values = module.values
    rows, cols = module.pattern_shape
    dense = values.new_zeros(rows * cols).scatter(0, _flat_positions(module), values)
    return dense.view(module.weight_shape)


def conv2d(spec, input: torch.Tensor, weight: torch.Tensor,
           bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``nn.Conv2d``'s forward for ``spec`` (a conv.ConvSpec), padding modes included."""
    t, b, l, r = spec.pads()
    x = input
    if any((t, b, l, r)):
        mode = "constant" if spec.padding_mode == "zeros" else spec.padding_mode
        unbatched = x.dim() == 3
        x = F.pad(x.unsqueeze(0) if unbatched else x, (l, r, t, b), mode=mode)
        x = x.squeeze(0) if unbatched else x
    return F.conv2d(x, weight, bias, spec.stride, 0, spec.dilation, spec.groups)


def conv2d_float64(module, input: torch.Tensor) -> torch.Tensor:
    """SparseConv2d in float64, for a call the conv's check_call and compute_dtypes passed
    (input, values and bias all float64, shapes checked)."""
    values, bias = module.values, module.bias
    weight = module.pattern.to_dense(values).view(module.weight_shape)
    return conv2d(module.spec, input, weight, bias)
