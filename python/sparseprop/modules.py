"""Drop-in sparse layers."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .csr import CSRPattern, check_sparsity, nnz_for
from .functional import check_float32_cpu, sparse_linear

_PATTERN_BUFFERS = ("indptr", "indices")
_TRANSPOSED_BUFFERS = ("t_indptr", "t_indices", "t_perm")


class SparseLinear(nn.Module):
    """A drop-in replacement for :class:`torch.nn.Linear` whose weight is sparse (CSR).

    The nonzero weights are one 1-D parameter, ``values``; the pattern lives in
    the buffers ``indptr`` (int64) and ``indices`` (int32), which are saved in
    ``state_dict``. The transposed pattern used by the input gradient is kept in
    non-persistent buffers and rebuilt whenever the pattern changes. Pruned
    weights do not exist, so no optimizer can make them nonzero.

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
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"SparseLinear runs on the CPU only, got device={device!r}")
        if dtype is not None and dtype != torch.float32:
            raise TypeError(f"SparseLinear computes in float32, got dtype={dtype}")
        self.in_features = in_features
        self.out_features = out_features
        pattern = CSRPattern.random(out_features, in_features, check_sparsity(sparsity), generator)
        self.values = nn.Parameter(torch.empty(pattern.nnz))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        if not bias:
            self.register_parameter("bias", None)
        self._install_pattern(pattern)
        self.reset_parameters(generator)

    # construction -------------------------------------------------------------------
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """nn.Linear's initialization: U(-1/sqrt(in), 1/sqrt(in)) for values and bias."""
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        with torch.no_grad():
            self.values.uniform_(-bound, bound, generator=generator)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound, generator=generator)

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
        weight = linear.weight.detach().to("cpu", torch.float32)
        if mask is None:
            keep = weight != 0
        else:
            if tuple(mask.shape) != tuple(weight.shape):
                raise ValueError(f"mask has shape {tuple(mask.shape)} but the weight is {tuple(weight.shape)}")
            keep = mask.detach().to("cpu") != 0
        if sparsity is not None:
            keep = _magnitude_keep(weight, keep, check_sparsity(sparsity))
        pattern = CSRPattern.from_mask(keep)
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, sparsity=1.0)
        module.set_pattern(pattern, pattern.gather(weight))
        if linear.bias is not None:
            with torch.no_grad():
                module.bias.copy_(linear.bias.detach().float())
        return module

    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` with the same outputs (zeros where the pattern has none)."""
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            dense.weight.copy_(self.weight)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    # pattern --------------------------------------------------------------------------
    def set_pattern(self, pattern: CSRPattern, values: Optional[torch.Tensor] = None) -> None:
        """Replace the pattern (and the values, if given; new positions start at zero).

        The ``values`` Parameter object is kept, so optimizers built earlier still
        hold it; their per-parameter state is *not* remapped here.
        """
        if pattern.shape != (self.out_features, self.in_features):
            raise ValueError(f"pattern shape {pattern.shape} does not match the layer "
                             f"({self.out_features}, {self.in_features})")
        if values is not None and tuple(values.shape) != (pattern.nnz,):
            raise ValueError(f"values must have shape ({pattern.nnz},), got {tuple(values.shape)}")
        with torch.no_grad():
            new_values = torch.zeros(pattern.nnz) if values is None else values.detach().float().clone()
            if self.values.shape != new_values.shape:
                self.values.grad = None
            self.values.data = new_values
        self._install_pattern(pattern)

    def _install_pattern(self, pattern: CSRPattern) -> None:
        self.register_buffer("indptr", pattern.indptr)
        self.register_buffer("indices", pattern.indices)
        for name, tensor in zip(_TRANSPOSED_BUFFERS, pattern.transposed):
            self.register_buffer(name, tensor, persistent=False)
        self._pattern = pattern
        self._pattern_key = self._buffers_key()

    def _buffers_key(self):
        # Changes whenever a pattern buffer is replaced or modified in place.
        buffers = self._buffers
        return tuple((b.data_ptr(), b._version, b.shape)
                     for b in (buffers[n] for n in _PATTERN_BUFFERS + _TRANSPOSED_BUFFERS))

    @property
    def pattern(self) -> CSRPattern:
        """The validated pattern; re-checked if its buffers were changed by hand."""
        if self._pattern_key != self._buffers_key():
            self._install_pattern(CSRPattern(self.indptr, self.indices,
                                             (self.out_features, self.in_features)))
        return self._pattern

    # inspection -------------------------------------------------------------------------
    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def sparsity(self) -> float:
        numel = self.in_features * self.out_features
        return 1.0 - self.nnz / numel if numel else 0.0

    @property
    def weight(self) -> torch.Tensor:
        """Dense (out_features, in_features) weight; differentiable w.r.t. ``values``."""
        return self.pattern.to_dense(self.values)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, sparsity={self.sparsity:.4f}, nnz={self.nnz}")

    # forward ----------------------------------------------------------------------------
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        check_float32_cpu(input, "input")
        if input.dim() == 0 or input.shape[-1] != self.in_features:
            raise ValueError(f"SparseLinear expected input of shape (*, {self.in_features}), "
                             f"got {tuple(input.shape)}")
        return sparse_linear(input, self.pattern, self.values, self.bias)

    # state_dict -------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        keys = [prefix + n for n in _PATTERN_BUFFERS]
        if all(k in state_dict for k in keys):
            # Validate everything before touching the module, so a bad checkpoint
            # leaves it as it was.
            where = f"while loading '{prefix or 'SparseLinear'}'"
            try:
                pattern = CSRPattern(state_dict[keys[0]], state_dict[keys[1]],
                                     (self.out_features, self.in_features))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{where}: {err}") from None
            values = state_dict.get(prefix + "values")
            if values is not None:
                if tuple(values.shape) != (pattern.nnz,):
                    raise ValueError(f"{where}: values has shape {tuple(values.shape)} but the "
                                     f"pattern has {pattern.nnz} nonzeros")
                if not torch.isfinite(values).all():
                    raise ValueError(f"{where}: values contains NaN or infinity")
            if self.values.shape != (pattern.nnz,):
                with torch.no_grad():
                    self.values.grad = None
                    self.values.data = torch.zeros(pattern.nnz)
            self._install_pattern(pattern)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def _magnitude_keep(weight: torch.Tensor, allowed: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Mask of the largest |weight| entries among ``allowed``, nnz set by ``sparsity``."""
    k = min(nnz_for(sparsity, weight.numel()), int(allowed.sum()))
    scores = weight.abs().masked_fill(~allowed, -1.0).flatten()
    keep = torch.zeros(weight.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.topk(scores, k, sorted=False).indices] = True
    return keep.view_as(weight)
