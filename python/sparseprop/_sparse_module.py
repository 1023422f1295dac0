"""What every sparse layer shares: the values parameter, the CSR pattern
buffers, pattern replacement and state_dict loading."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from .csr import CSRPattern, check_sparsity, nnz_for

PATTERN_BUFFERS = ("indptr", "indices")


class SparseWeightModule(nn.Module):
    """Base class: a dense weight of shape ``weight_shape`` stored as CSR.

    The CSR matrix has one row per output (``weight_shape[0]``) and one column
    per remaining weight element (``prod(weight_shape[1:])``, in the order of
    ``weight.flatten(1)``). ``values`` holds its nonzeros; ``indptr`` (int64)
    and ``indices`` (int32) are buffers saved in ``state_dict``. Subclasses set
    ``weight_shape`` before calling :meth:`_init_sparse` and may override
    :meth:`_pattern_installed` to rebuild what they derive from the pattern.
    """

    weight_shape: Tuple[int, ...]
    # Buffers whose replacement or in-place change means the pattern changed.
    _watched_buffers: Tuple[str, ...] = PATTERN_BUFFERS

    def _init_sparse(self, sparsity: float, bias: bool, generator: Optional[torch.Generator]) -> None:
        pattern = CSRPattern.random(*self.pattern_shape, check_sparsity(sparsity), generator)
        self.values = nn.Parameter(torch.empty(pattern.nnz, dtype=torch.float32))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.weight_shape[0], dtype=torch.float32))
        else:
            self.register_parameter("bias", None)
        self._install_pattern(pattern)
        self.reset_parameters(generator)

    @property
    def pattern_shape(self) -> Tuple[int, int]:
        return (self.weight_shape[0], math.prod(self.weight_shape[1:]))

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """PyTorch's default for Linear/Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        for values and bias, fan_in being the dense fan-in."""
        fan_in = self.pattern_shape[1]
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        with torch.no_grad():
            self.values.uniform_(-bound, bound, generator=generator)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound, generator=generator)

    # pattern --------------------------------------------------------------------------
    def set_pattern(self, pattern: CSRPattern, values: Optional[torch.Tensor] = None,
                    optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Replace the pattern, with ``values`` (default: zeros) as its nonzeros.

        The ``values`` Parameter object is kept, so optimizers built earlier still
        hold it. Without ``optimizer`` their per-parameter state is *not* remapped.
        With ``optimizer``, its per-entry state tensors for ``values`` (momentum,
        Adam moments, ...) and ``values.grad`` follow their (row, column) position:
        entries in both patterns keep them, new entries start at zero; scalar state
        such as ``step`` is kept. (:func:`sparseprop.update_pattern` also keeps the
        surviving entries' values.)
        """
        if pattern.shape != self.pattern_shape:
            raise ValueError(f"pattern shape {pattern.shape} does not match the layer's "
                             f"{self.pattern_shape}")
        if values is not None and tuple(values.shape) != (pattern.nnz,):
            raise ValueError(f"values must have shape ({pattern.nnz},), got {tuple(values.shape)}")
        old_pattern = old_grad = None
        if optimizer is not None:
            from .optim_state import check_optimizer

            check_optimizer(optimizer, self.values)
            old_pattern, old_grad = self.pattern, self.values.grad
        self._replace_values(torch.zeros(pattern.nnz, dtype=torch.float32) if values is None
                             else values.detach().float().clone())
        self._install_pattern(pattern)
        if optimizer is not None:
            from .optim_state import entry_map, remap_optimizer_state

            remap_optimizer_state(optimizer, self.values, old_pattern, pattern)
            if old_grad is not None and old_grad.shape == (old_pattern.nnz,):
                kept, source = entry_map(old_pattern, pattern)
                grad = torch.zeros(pattern.nnz, dtype=old_grad.dtype)
                grad[kept] = old_grad[source[kept]]
                self.values.grad = grad

    def _replace_values(self, new_values: torch.Tensor) -> None:
        """Swap the data of the ``values`` Parameter (same object) for ``new_values``."""
        resized = self.values.shape != new_values.shape
        with torch.no_grad():
            if resized:
                self.values.grad = None
            self.values.data = new_values
        if resized:
            reset_grad_accumulator(self.values)

    def _install_pattern(self, pattern: CSRPattern) -> None:
        self.register_buffer("indptr", pattern.indptr)
        self.register_buffer("indices", pattern.indices)
        self._pattern = pattern
        self._pattern_installed(pattern)
        self._pattern_key = self._buffers_key()

    def _pattern_installed(self, pattern: CSRPattern) -> None:
        """Hook for subclasses: derive caches or buffers from a new pattern."""

    def _buffers_key(self):
        buffers = self._buffers
        # Inference tensors have no version counter, but cannot be edited in place
        # outside inference mode either.
        return tuple((b.data_ptr(), -1 if b.is_inference() else b._version, b.shape)
                     for b in (buffers[n] for n in self._watched_buffers))

    @property
    def pattern(self) -> CSRPattern:
        """The validated pattern; re-checked if its buffers were changed by hand."""
        if self._pattern_key != self._buffers_key():
            self._install_pattern(CSRPattern(self.indptr, self.indices, self.pattern_shape))
        return self._pattern

    # inspection -------------------------------------------------------------------------
    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def sparsity(self) -> float:
        numel = math.prod(self.weight_shape)
        return 1.0 - self.nnz / numel if numel else 0.0

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight (zeros off the pattern); differentiable w.r.t. ``values``."""
        return self.pattern.to_dense(self.values).view(self.weight_shape)

    def _copy_dense_into(self, dense: nn.Module) -> nn.Module:
        with torch.no_grad():
            dense.weight.copy_(self.weight)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def _load_dense(self, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    mask: Optional[torch.Tensor], sparsity: Optional[float]) -> None:
        """Take the pattern and values of a dense weight (see ``from_dense``)."""
        weight = weight.detach().to("cpu", torch.float32)
        if mask is None:
            # Without a mask, a target sparsity may pick among all entries (even
            # zero ones, if the weight has too few nonzeros to reach it).
            keep = weight != 0 if sparsity is None else torch.ones_like(weight, dtype=torch.bool)
        else:
            if tuple(mask.shape) != tuple(weight.shape):
                raise ValueError(f"mask has shape {tuple(mask.shape)} but the weight is "
                                 f"{tuple(weight.shape)}")
            keep = mask.detach().to("cpu") != 0
        if sparsity is not None:
            keep = magnitude_keep(weight, keep, check_sparsity(sparsity))
        pattern = CSRPattern.from_mask(keep.reshape(self.pattern_shape))
        self.set_pattern(pattern, pattern.gather(weight.reshape(self.pattern_shape)))
        if bias is not None:
            with torch.no_grad():
                self.bias.copy_(bias.detach().float())

    # state_dict -------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        keys = [prefix + n for n in PATTERN_BUFFERS]
        if all(k in state_dict for k in keys):
            # Validate everything before touching the module, so a bad checkpoint
            # leaves it as it was.
            where = f"while loading '{prefix or type(self).__name__}'"
            try:
                pattern = CSRPattern(state_dict[keys[0]], state_dict[keys[1]], self.pattern_shape)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{where}: {err}") from None
            values = state_dict.get(prefix + "values")
            if values is not None and tuple(values.shape) != (pattern.nnz,):
                raise ValueError(f"{where}: values has shape {tuple(values.shape)} but the "
                                 f"pattern has {pattern.nnz} nonzeros")
            if self.values.shape != (pattern.nnz,):
                self._replace_values(torch.zeros(pattern.nnz, dtype=torch.float32))
            self._install_pattern(pattern)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def reset_grad_accumulator(param: torch.Tensor) -> None:
    """Make autograd forget the gradient accumulator it cached for ``param``.

    Autograd caches one AccumulateGrad node per leaf, recording the leaf's shape, for as
    long as any graph references it (e.g. last step's ``loss`` still alive). After
    ``param.data`` changes shape (a pattern change that changes nnz), a new graph would
    reuse that node and backward would fail ("invalid gradient ... expected shape
    compatible with [old nnz]"). Assigning ``.data`` of another dtype is the public way
    to drop the cached node (torch resets it on dtype changes, not on shape changes).
    Hooks a wrapper registered on the old node (DistributedDataParallel) are dropped too.
    """
    with torch.no_grad():
        data = param.data
        param.data = data.to(torch.float64 if data.dtype != torch.float64 else torch.float32)
        param.data = data


def magnitude_keep(weight: torch.Tensor, allowed: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Mask of the largest |weight| entries among ``allowed``, nnz set by ``sparsity``."""
    k = min(nnz_for(sparsity, weight.numel()), int(allowed.sum()))
    scores = weight.abs().masked_fill(~allowed, -1.0).flatten()
    keep = torch.zeros(weight.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.topk(scores, k, sorted=False).indices] = True
    return keep.view_as(weight)
