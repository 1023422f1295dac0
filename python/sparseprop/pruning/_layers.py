"""The layers a pruner works on, and how a mask is put on each of them.

A prunable layer is an ``nn.Linear`` / ``nn.Conv2d`` (pruned through a mask that the
pruner keeps enforcing) or a ``SparseLinear`` / ``SparseConv2d`` (pruned by changing
its pattern). A dense layer becomes sparse once its mask is at least ``sparse_from``
sparse, and a sparse layer becomes dense again below it; either switch swaps the
module in the model and moves the optimizer's state (momentum, Adam moments, ...)
to the new parameter, so training goes on as if nothing happened.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from .._sparse_module import SparseWeightModule
from ..module_tree import (NamesArg, conversion_blocker, dense_twin, empty_sparse_twin,
                           module_occurrences, replace_all, select_modules, shared_parameter_users)
from ..modules import SparseConv2d, SparseLinear
from ..optim_state import state_tensors, swap_parameter, update_pattern
from ..topk_select import top_k_mask
from ._fast_pattern import gather_pattern, keep_entries, pattern_of_mask
from .switch_point import resolve_sparse_from

_DENSE_TYPES = (nn.Linear, nn.Conv2d)
_SPARSE_TYPES = (SparseLinear, SparseConv2d)
_PRUNABLE_KINDS = "a prunable layer (nn.Linear, nn.Conv2d, SparseLinear, SparseConv2d)"


def _is_prunable(module: nn.Module) -> bool:
    return isinstance(module, _DENSE_TYPES + _SPARSE_TYPES)


class Layer:
    """One prunable layer: its name in the model, its current module and (for a dense
    module) its mask. ``weight`` / ``mask`` always have the dense weight's shape."""

    def __init__(self, name: str, names: List[str], module: nn.Module) -> None:
        self.name, self.names, self.module = name, names, module
        self.dense_mask: Optional[torch.Tensor] = None  # None: nothing pruned
        self._dense_nnz: Optional[int] = None  # its count (counting is a full pass)
        self._grad_hook = self._mask_hook = None
        self.capture: Optional[torch.Tensor] = None  # dense gradient, while capturing
        self.capturing = False
        self._capture_hook = None
        self.input_shape: Optional[torch.Size] = None  # of the last forward (its batch)
        self._shape_hook = None
        self.watching = True  # False while the pruner's own passes run (SNIP, SynFlow)

    def attach(self) -> None:
        """Start masking the gradient of a dense layer's weight (pruners call this once
        their arguments are validated, so a failed constructor leaves no hooks)."""
        if self.is_dense and self._grad_hook is None:
            self._install_grad_hook()
        self._watch_inputs()

    def _watch_inputs(self) -> None:
        """Record the largest input shape of the training forwards: ``sparse_from="auto"``
        needs the layer's batch to know where its sparse kernels start to pay (an epoch's
        short last batch or an evaluation pass must not change it)."""
        if self._shape_hook is not None:
            self._shape_hook.remove()

        def record(module, args):
            if self.watching and args and isinstance(args[0], torch.Tensor) \
                    and torch.is_grad_enabled():
                shape = args[0].shape
                if self.input_shape is None or shape.numel() > self.input_shape.numel():
                    self.input_shape = shape

        self._shape_hook = self.module.register_forward_pre_hook(record)

    # --- inspection ------------------------------------------------------------------
    @property
    def is_dense(self) -> bool:
        return not isinstance(self.module, SparseWeightModule)

    @property
    def shape(self) -> torch.Size:
        module = self.module
        return torch.Size(module.weight_shape) if not self.is_dense else module.weight.shape

    @property
    def numel(self) -> int:
        return self.shape.numel()

    @property
    def kernel(self) -> tuple:
        """(n_out, n_in, k_h, k_w) as the ER/ERK formulas see the layer."""
        shape = tuple(self.shape)
        return shape if len(shape) == 4 else shape + (1, 1)

    def weight(self) -> torch.Tensor:
        """The dense weight (zeros where pruned), detached."""
        if self.is_dense:
            w = self.module.weight.detach()
            return w if self.dense_mask is None else w * self.dense_mask
        return self.module.weight.detach()

    def mask(self) -> torch.Tensor:
        """Boolean mask of the kept weights."""
        if self.is_dense:
            if self.dense_mask is None:
                return torch.ones(self.shape, dtype=torch.bool)
            return self.dense_mask.clone()
        return self.module.pattern.mask().view(self.shape)

    def nnz(self) -> int:
        if self.is_dense:
            return self.numel if self.dense_mask is None else self._dense_nnz
        return self.module.nnz

    def parameters(self) -> List[nn.Parameter]:
        """The parameters holding this layer's weight (not its bias)."""
        return [self.module.weight if self.is_dense else self.module.values]

    # --- dense-form mask enforcement ---------------------------------------------------
    def _install_grad_hook(self) -> None:
        if not self.module.weight.requires_grad:
            return  # a frozen weight gets no gradient; enforce() still applies the mask

        def capture_grad(grad: torch.Tensor) -> torch.Tensor:
            if self.capturing:  # the dense gradient, pruned positions included
                self.capture = grad.detach().clone() if self.capture is None else self.capture + grad
            return grad

        def mask_grad(param: torch.Tensor) -> None:
            # In place, once the gradient is accumulated (a hook returning grad * mask
            # would allocate a full-size tensor every step).
            if self.dense_mask is not None and param.grad is not None:
                _zero_pruned(param.grad, self.dense_mask)

        weight = self.module.weight
        self._grad_hook = weight.register_hook(capture_grad)
        self._mask_hook = weight.register_post_accumulate_grad_hook(mask_grad)

    def remove_hooks(self) -> None:
        for handle in (self._grad_hook, self._mask_hook, self._capture_hook, self._shape_hook):
            if handle is not None:
                handle.remove()
        self._grad_hook = self._mask_hook = self._capture_hook = self._shape_hook = None

    def enforce(self) -> None:
        """Zero the pruned weights of a dense layer (after an optimizer step)."""
        if self.is_dense and self.dense_mask is not None:
            _zero_pruned(self.module.weight, self.dense_mask)

    def _set_dense_mask(self, mask: Optional[torch.Tensor], nnz: Optional[int] = None) -> None:
        """``nnz``: the mask's count, if the caller has it."""
        self.dense_mask = None if mask is None else mask.contiguous()
        self._dense_nnz = None if mask is None else (
            int(torch.count_nonzero(mask)) if nnz is None else nnz)

    # --- mask changes ---------------------------------------------------------------
    def set_mask(self, model: nn.Module, mask: torch.Tensor, optimizer: Optional[torch.optim.Optimizer],
                 sparse_from) -> None:
        """Keep only ``mask``'s weights (new ones start at zero), switching the module's
        form if ``sparse_from`` (a number, None or "auto") says so."""
        mask = mask.detach().to("cpu").bool().reshape(self.shape)
        kept = int(torch.count_nonzero(mask))
        sparsity = 1.0 - kept / self.numel if self.numel else 0.0
        threshold = self.switch_at(sparse_from, sparsity)
        want_sparse = threshold is not None and sparsity >= threshold and self.convertible(model)
        if self.is_dense and want_sparse:
            # Only the kept positions are gathered: zeroing the pruned ones first is moot.
            self._set_dense_mask(mask, kept)
            self._to_sparse(model, optimizer)
            return
        if not self.is_dense and not want_sparse:
            self._to_dense(model, optimizer)
        if self.is_dense:
            self._mask_dense(mask, optimizer, kept)
        else:
            update_pattern(self.module, mask, optimizer)

    def switch_at(self, sparse_from, sparsity: float) -> Optional[float]:
        """The sparsity from which this layer runs sparse (``None``: never), for a mask
        about to be ``sparsity`` sparse."""
        return resolve_sparse_from(sparse_from, self.module, self.input_shape, sparsity)

    def keep_top_values(self, k: int, optimizer: Optional[torch.optim.Optimizer]) -> None:
        """Magnitude-prune a sparse layer inside its sparse form: keep its ``k`` largest
        |values| (ties by position, as the dense path breaks them), in O(nnz), with no
        dense weight, score or mask."""
        scores = self.module.values.detach().abs()
        keep_entries(self.module, top_k_mask(scores, k), optimizer)

    def convertible(self, model: nn.Module) -> bool:
        """Can this layer run on the sparse kernels? (``module_tree.conversion_blocker``:
        the standard forward, float32 CPU weights, a weight no other module shares.)"""
        if not self.is_dense:
            return True
        return conversion_blocker(self.module, self.module.weight,
                                  shared_parameter_users(model)) is None

    def _mask_dense(self, mask: torch.Tensor, optimizer, kept: int) -> None:
        param = self.module.weight
        self._set_dense_mask(None if kept == self.numel else mask, kept)
        if self.dense_mask is None:
            return
        for value in [param] + ([param.grad] if param.grad is not None else []) \
                + list(state_tensors(optimizer, param, param.shape)):
            _zero_pruned(value, self.dense_mask)

    def _to_sparse(self, model: nn.Module, optimizer) -> None:
        dense = self.module
        mask = self.dense_mask if self.dense_mask is not None else torch.ones(self.shape, dtype=torch.bool)
        sparse = empty_sparse_twin(dense, dense.bias is not None)
        # The mask's True entries in row-major order are the CSR storage order: the
        # values and the optimizer state are gathers at those positions (no search).
        pattern = pattern_of_mask(mask, sparse.pattern_shape)
        take = gather_pattern(pattern)
        sparse.set_pattern(pattern, take(dense.weight), copy=False)  # a fresh gather
        if dense.bias is not None:
            sparse.bias = dense.bias  # the same Parameter: the optimizer keeps its state
        sparse.train(dense.training)
        sparse.values.requires_grad_(dense.weight.requires_grad)
        swap_parameter(optimizer, dense.weight, sparse.values, take)
        self.remove_hooks()
        self._set_dense_mask(None)
        self._install(model, sparse)

    def _to_dense(self, model: nn.Module, optimizer) -> None:
        sparse = self.module
        if type(sparse).__name__ == "SparseConv1D":  # dense Conv1D stores (in, out): unsupported
            raise NotImplementedError(
                f"'{self.name}' is a GPT-2 Conv1D layer: pruners handle it in sparse form only "
                f"(a schedule that makes it dense again, e.g. AC/DC's dense phases, is not supported)")
        pattern = sparse.pattern
        dense = dense_twin(sparse)
        if sparse.bias is not None:
            dense.bias = sparse.bias
        dense.train(sparse.training)
        dense.weight.requires_grad_(sparse.values.requires_grad)
        self._set_dense_mask(pattern.mask().view(self.shape))
        swap_parameter(optimizer, sparse.values, dense.weight,
                        lambda t: pattern.to_dense(t).view(self.shape))
        self.remove_hooks()
        self._install(model, dense)
        self._install_grad_hook()

    def _install(self, model: nn.Module, module: nn.Module) -> None:
        """Put ``module`` at every name of this layer (never the root: see find_layers)."""
        if self.capturing:
            raise RuntimeError(f"layer '{self.name}' changed form while capturing a gradient")
        self.module = module
        replace_all(model, self.names, module)
        self._watch_inputs()

    # --- dense gradient capture (for regrowth and saliency scores) -----------------------
    def start_capture(self) -> None:
        """Record the dense gradient of the weight over the next backward passes (summed),
        including the pruned positions. A sparse layer saves its input and output
        gradient and forms the dense gradient on demand."""
        self.capturing, self.capture = True, None
        if self.is_dense or self._capture_hook is not None:
            return
        inputs: List = []

        def keep_io(module, args, output):
            if torch.is_grad_enabled() and output.requires_grad:
                x = args[0].detach()
                output.register_hook(lambda g: inputs.append((x, g.detach())))

        self._saved_io = inputs
        self._capture_hook = self.module.register_forward_hook(keep_io)

    def stop_capture(self) -> Optional[torch.Tensor]:
        """End a capture and return the dense gradient (None if no backward ran)."""
        grad = self.capture
        if not self.is_dense and self._capture_hook is not None:
            for x, g in self._saved_io:
                part = _dense_weight_grad(self.module, x, g)
                grad = part if grad is None else grad + part
            self._capture_hook.remove()
            self._capture_hook, self._saved_io = None, []
        self.capturing, self.capture = False, None
        return grad


def _zero_pruned(t: torch.Tensor, mask: torch.Tensor) -> None:
    """``t *= mask`` in place. Numpy multiplies by a bool array ~6x faster than torch
    (which promotes every element), and a float copy of the mask would cost 4 bytes per
    weight of resident memory."""
    with torch.no_grad():
        if t.is_contiguous() and t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):
            data = t.detach().numpy()
            np.multiply(data, mask.numpy(), out=data)
            t.view(-1)[:0].zero_()  # an in-place op, so autograd's version counter moves
        else:
            t.mul_(mask)


def _dense_weight_grad(module: SparseWeightModule, x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """d(loss)/d(dense weight) of a sparse layer, from its input and output gradient."""
    if isinstance(module, SparseLinear):
        g = grad_out.reshape(-1, grad_out.shape[-1])
        return (g.t() @ x.reshape(-1, x.shape[-1])).view(module.weight_shape)
    dense = module.to_dense()
    with torch.enable_grad():
        out = dense(x)
        (grad,) = torch.autograd.grad(out, dense.weight, grad_out)
    return grad


def find_layers(model: nn.Module, layers: NamesArg = None, exclude: NamesArg = None) -> Dict[str, Layer]:
    """The prunable layers of ``model`` selected by ``layers`` / ``exclude`` (module names:
    a list, or a regular expression matched against the whole name), in model order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    occurrences = module_occurrences(model)
    prunable = {key: (module, names) for key, (module, names) in occurrences.items()
                if _is_prunable(module)}
    chosen = select_modules(layers, occurrences, _is_prunable, "layers", _PRUNABLE_KINDS)
    dropped = (select_modules(exclude, occurrences, _is_prunable, "exclude", _PRUNABLE_KINDS)
               if exclude is not None else set())
    found: Dict[str, Layer] = {}
    for key, (module, names) in prunable.items():
        if (chosen is not None and key not in chosen) or key in dropped:
            continue
        if "" in names:
            raise ValueError("the model itself is a prunable layer; wrap it in nn.Sequential")
        found[names[0]] = Layer(names[0], names, module)
    if not found:
        raise ValueError("no prunable layers (nn.Linear, nn.Conv2d, SparseLinear, SparseConv2d) "
                         "selected in the model")
    return found
