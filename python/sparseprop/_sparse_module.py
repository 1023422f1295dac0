"""What every sparse layer shares: the values parameter, the CSR pattern
buffers, pattern replacement and state_dict loading."""
from __future__ import annotations

import math
import threading
from typing import Any, Mapping, Optional, Tuple

import torch
from torch import nn

from .csr import CSRPattern, check_sparsity, nnz_for, topk_mask

PATTERN_BUFFERS = ("indptr", "indices")
_reinstall_lock = threading.Lock()  # the rare path of noticing a hand-edited pattern


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

    def _init_sparse(self, sparsity: float, bias: bool, generator: Optional[torch.Generator],
                     dtype: torch.dtype = torch.float32) -> None:
        """``dtype`` is the storage dtype of values and bias (see STORAGE_DTYPES)."""
        pattern = CSRPattern.random(*self.pattern_shape, check_sparsity(sparsity), generator)
        self.values = nn.Parameter(torch.empty(pattern.nnz, dtype=dtype))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.weight_shape[0], dtype=dtype))
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
                    optimizer: Optional[torch.optim.Optimizer] = None, copy: bool = True) -> None:
        """Replace the pattern, with ``values`` (default: zeros) as its nonzeros.
        ``copy=False`` takes ``values`` itself when it is a contiguous tensor of the layer's
        dtype (the caller hands it over: later edits to it edit the layer).

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
        dtype = self.values.dtype  # the storage dtype stays
        if values is None:
            values = torch.zeros(pattern.nnz, dtype=dtype)
        else:
            values = values.detach().to(dtype, copy=copy).contiguous()
        self._replace_values(values)
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

    def _pattern_installed(self, pattern: CSRPattern) -> None:
        """Hook for subclasses: derive caches or buffers from a new pattern."""

    @property
    def pattern(self) -> CSRPattern:
        """The validated pattern. Checked on every use (two identity tests and a native
        checksum): if the buffers were replaced or edited in place, even through
        ``.data`` or numpy, they are validated again and everything derived is rebuilt."""
        p = self._pattern
        buffers = self._buffers
        if buffers.get("indptr") is p.indptr and buffers.get("indices") is p.indices \
                and p.is_current():
            return p
        return self._reinstall_from_buffers()

    def _reinstall_from_buffers(self) -> CSRPattern:
        with _reinstall_lock:
            p = self._pattern
            indptr, indices = (self._buffers.get(name) for name in PATTERN_BUFFERS)
            if indptr is p.indptr and indices is p.indices and p.is_current():
                return p  # another thread got here first
            for name, buffer in zip(PATTERN_BUFFERS, (indptr, indices)):
                if not isinstance(buffer, torch.Tensor):
                    raise ValueError(f"{type(self).__name__}.{name} must be a tensor, got "
                                     f"{type(buffer).__name__}")
            self._install_pattern(CSRPattern(indptr, indices, self.pattern_shape))
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
        dense = dense.to(self.values.dtype)  # the dense twin stores what this layer stores
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
    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, all-or-nothing: every entry is checked (see
        :func:`sparseprop.safe_load_state_dict`) before anything is copied."""
        from .state_checks import check_state_dict

        check_state_dict(self, state_dict, strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def check_state(self, state_dict: Mapping[str, Any], prefix: str = "") -> Optional[CSRPattern]:
        """Check this layer's entries of ``state_dict`` (keys ``prefix + name``) without
        changing anything; ValueError naming the key otherwise. Returns the pattern they
        hold, or None if they hold none (then ``values``, if given, must fit the current one).

        A pattern is ``indptr`` and ``indices`` together, with ``values`` for its
        nonzeros; without ``values`` it must be the current pattern, since the current
        values would not fit any other. Keys absent altogether are left to the caller's
        ``strict`` (torch reports them after loading, :func:`check_state_dict` before)."""
        where = self._where(prefix)
        given = self._given_entries(state_dict, prefix, where)
        pattern = self._given_pattern(given, prefix, where)
        nnz = self.nnz if pattern is None else pattern.nnz
        if "values" in given and tuple(given["values"].shape) != (nnz,):
            raise ValueError(f"{where}: values has shape {tuple(given['values'].shape)} but the "
                             f"pattern has {nnz} nonzeros")
        if pattern is not None and "values" not in given and not _same_pattern(pattern, self.pattern):
            raise ValueError(f"{where}: '{prefix}values' is missing; the current values do not "
                             f"fit the new pattern")
        return pattern

    def _given_entries(self, state_dict, prefix: str, where: str) -> dict:
        """This layer's entries in ``state_dict``, by name, each a real tensor that fits
        (pattern and values shapes are checked against the pattern, not here)."""
        own = self._own_state()
        given = {name: state_dict[prefix + name] for name in own if prefix + name in state_dict}
        for name, value in given.items():
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{where}: '{prefix}{name}' is a {type(value).__name__}, "
                                 f"expected a tensor")
            if value.is_complex() or value.device.type == "meta":
                raise ValueError(f"{where}: '{prefix}{name}' is a {value.dtype} tensor on "
                                 f"{value.device}, expected real numbers")
            shape = tuple(own[name].shape)
            if name not in PATTERN_BUFFERS + ("values",) and tuple(value.shape) != shape:
                raise ValueError(f"{where}: '{prefix}{name}' has shape {tuple(value.shape)}, "
                                 f"expected {shape}")
        return given

    def _given_pattern(self, given: dict, prefix: str, where: str) -> Optional[CSRPattern]:
        present = [n for n in PATTERN_BUFFERS if n in given]
        if not present:
            return None
        if len(present) == 1:
            missing = next(n for n in PATTERN_BUFFERS if n not in given)
            raise ValueError(f"{where}: '{prefix}{present[0]}' is given without "
                             f"'{prefix}{missing}'; a pattern needs both")
        try:
            return CSRPattern(given["indptr"], given["indices"], self.pattern_shape)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from None

    def _where(self, prefix: str) -> str:
        return f"while loading '{prefix[:-1] or type(self).__name__}'"

    def _own_state(self) -> dict:
        """What this layer itself puts in a state dict (not its submodules), by name."""
        own = {k: v for k, v in self._parameters.items() if v is not None}
        own.update((k, v) for k, v in self._buffers.items()
                   if v is not None and k not in self._non_persistent_buffers_set)
        return own

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Everything given is checked before the layer changes, so a bad entry leaves it
        # as it was. (torch passes strict=True here whatever the caller asked.)
        pattern = self.check_state(state_dict, prefix)
        if pattern is not None:
            if self.values.shape != (pattern.nnz,):
                self._replace_values(torch.zeros(pattern.nnz, dtype=self.values.dtype))
            self._install_pattern(pattern)
            # torch copies (or assigns) the pattern entries: give it the validated private
            # copies just installed, never the caller's tensors.
            state_dict = dict(state_dict)
            for name in PATTERN_BUFFERS:
                state_dict[prefix + name] = self._buffers[name]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def _same_pattern(a: CSRPattern, b: CSRPattern) -> bool:
    return a.shape == b.shape and torch.equal(a.indptr, b.indptr) and torch.equal(a.indices, b.indices)


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
        # An empty tensor of the other dtype: converting the data itself would cost a
        # full-size copy (tens of ms on a large layer) for nothing.
        param.data = torch.empty(0, dtype=torch.float64 if data.dtype != torch.float64 else torch.float32)
        param.data = data


def magnitude_keep(weight: torch.Tensor, allowed: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Mask of the largest |weight| entries among ``allowed``, nnz set by ``sparsity``."""
    return topk_mask(weight.abs(), nnz_for(sparsity, weight.numel()), allowed)
