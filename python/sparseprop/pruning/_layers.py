"""The layers a pruner works on, and how a mask is put on each of them.

A prunable layer is an ``nn.Linear`` / ``nn.Conv2d`` (pruned through a mask that the
pruner keeps enforcing) or a ``SparseLinear`` / ``SparseConv2d`` (pruned by changing
its pattern). A dense layer becomes sparse once its mask is at least ``sparse_from``
sparse, and a sparse layer becomes dense again below it; either switch swaps the
module in the model and moves the optimizer's state (momentum, Adam moments, ...)
to the new parameter, so training goes on as if nothing happened.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import nn

from .._sparse_module import SparseWeightModule
from ..convert import _module_occurrences, _replace_all
from ..modules import SparseConv2d, SparseLinear
from ..optim_state import update_pattern

NamesArg = Union[None, str, "re.Pattern[str]", Sequence[str]]
_DENSE_TYPES = (nn.Linear, nn.Conv2d)
_SPARSE_TYPES = (SparseLinear, SparseConv2d)


class Layer:
    """One prunable layer: its name in the model, its current module and (for a dense
    module) its mask. ``weight`` / ``mask`` always have the dense weight's shape."""

    def __init__(self, name: str, names: List[str], module: nn.Module) -> None:
        self.name, self.names, self.module = name, names, module
        self.dense_mask: Optional[torch.Tensor] = None  # None: nothing pruned
        self._grad_hook = None
        self.capture: Optional[torch.Tensor] = None  # dense gradient, while capturing
        self.capturing = False
        self._capture_hook = None

    def attach(self) -> None:
        """Start masking the gradient of a dense layer's weight (pruners call this once
        their arguments are validated, so a failed constructor leaves no hooks)."""
        if self.is_dense and self._grad_hook is None:
            self._install_grad_hook()

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
            return self.numel if self.dense_mask is None else int(self.dense_mask.sum())
        return self.module.nnz

    def parameters(self) -> List[nn.Parameter]:
        """The parameters holding this layer's weight (not its bias)."""
        return [self.module.weight if self.is_dense else self.module.values]

    # --- dense-form mask enforcement ---------------------------------------------------
    def _install_grad_hook(self) -> None:
        if not self.module.weight.requires_grad:
            return  # a frozen weight gets no gradient; enforce() still applies the mask

        def mask_grad(grad: torch.Tensor) -> torch.Tensor:
            if self.capturing:
                self.capture = grad.detach().clone() if self.capture is None else self.capture + grad
            return grad if self.dense_mask is None else grad * self.dense_mask

        self._grad_hook = self.module.weight.register_hook(mask_grad)

    def remove_hooks(self) -> None:
        for handle in (self._grad_hook, self._capture_hook):
            if handle is not None:
                handle.remove()
        self._grad_hook = self._capture_hook = None

    def enforce(self) -> None:
        """Zero the pruned weights of a dense layer (after an optimizer step)."""
        if self.is_dense and self.dense_mask is not None:
            with torch.no_grad():
                self.module.weight.mul_(self.dense_mask)

    # --- mask changes ---------------------------------------------------------------
    def set_mask(self, model: nn.Module, mask: torch.Tensor, optimizer: Optional[torch.optim.Optimizer],
                 sparse_from: Optional[float]) -> None:
        """Keep only ``mask``'s weights (new ones start at zero), switching the module's
        form if ``sparse_from`` says so."""
        mask = mask.detach().to("cpu").bool().reshape(self.shape)
        sparsity = 1.0 - int(mask.sum()) / self.numel if self.numel else 0.0
        want_sparse = sparse_from is not None and sparsity >= sparse_from and self.convertible(model)
        if self.is_dense and want_sparse:
            self._mask_dense(mask, optimizer)
            self._to_sparse(model, optimizer)
            return
        if not self.is_dense and not want_sparse:
            self._to_dense(model, optimizer)
        if self.is_dense:
            self._mask_dense(mask, optimizer)
        else:
            update_pattern(self.module, mask, optimizer)

    def convertible(self, model: nn.Module) -> bool:
        """Can this layer run on the sparse kernels? (exact nn.Linear / nn.Conv2d type,
        so its forward is the standard one; float32 CPU weights; a weight no other module
        shares, since swapping the module would untie it)."""
        if not self.is_dense:
            return True
        w = self.module.weight
        owners = sum(any(p is w for p in m._parameters.values()) for m in model.modules())
        return (type(self.module) in _DENSE_TYPES and w.dtype == torch.float32
                and w.device.type == "cpu" and owners == 1)

    def _mask_dense(self, mask: torch.Tensor, optimizer) -> None:
        param = self.module.weight
        self.dense_mask = None if bool(mask.all()) else mask
        if self.dense_mask is None:
            return
        with torch.no_grad():
            param.mul_(mask)
            if param.grad is not None:
                param.grad.mul_(mask)
            for value in _state_tensors(optimizer, param, param.shape):
                value.mul_(mask)

    def _to_sparse(self, model: nn.Module, optimizer) -> None:
        dense = self.module
        mask = self.dense_mask if self.dense_mask is not None else torch.ones(self.shape, dtype=torch.bool)
        cls = SparseLinear if isinstance(dense, nn.Linear) else SparseConv2d
        sparse = cls.from_dense(dense, mask=mask)
        pattern = sparse.pattern
        if dense.bias is not None:
            sparse.bias = dense.bias  # the same Parameter: the optimizer keeps its state
        sparse.train(dense.training)
        sparse.values.requires_grad_(dense.weight.requires_grad)
        _swap_parameter(optimizer, dense.weight, sparse.values,
                        lambda t: pattern.gather(t.reshape(pattern.shape)))
        self.remove_hooks()
        self.dense_mask = None
        self._install(model, sparse)

    def _to_dense(self, model: nn.Module, optimizer) -> None:
        sparse = self.module
        if type(sparse).__name__ == "SparseConv1D":  # dense Conv1D stores (in, out): unsupported
            raise NotImplementedError(
                f"'{self.name}' is a GPT-2 Conv1D layer: pruners handle it in sparse form only "
                f"(a schedule that makes it dense again, e.g. AC/DC's dense phases, is not supported)")
        pattern = sparse.pattern
        dense = sparse.to_dense()
        if sparse.bias is not None:
            dense.bias = sparse.bias
        dense.train(sparse.training)
        dense.weight.requires_grad_(sparse.values.requires_grad)
        self.dense_mask = pattern.mask().view(self.shape)
        _swap_parameter(optimizer, sparse.values, dense.weight,
                        lambda t: pattern.to_dense(t).view(self.shape))
        self.remove_hooks()
        self._install(model, dense)
        self._install_grad_hook()

    def _install(self, model: nn.Module, module: nn.Module) -> None:
        """Put ``module`` at every name of this layer (never the root: see find_layers)."""
        if self.capturing:
            raise RuntimeError(f"layer '{self.name}' changed form while capturing a gradient")
        self.module = module
        _replace_all(model, self.names, module)

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


def _state_tensors(optimizer, param: torch.Tensor, shape) -> Iterable[torch.Tensor]:
    if optimizer is None:
        return []
    state = optimizer.state.get(param, {})
    return [v for k, v in state.items()
            if k != "step" and isinstance(v, torch.Tensor) and v.shape == shape]


def _swap_parameter(optimizer, old: torch.Tensor, new: torch.Tensor, convert) -> None:
    """Make ``optimizer`` train ``new`` in place of ``old``, converting ``old``'s state
    tensors (those shaped like ``old``) with ``convert``; scalar state (step) is kept."""
    if optimizer is None:
        return
    found = False
    for group in optimizer.param_groups:
        params = group["params"]
        for i, p in enumerate(params):
            if p is old:
                params[i], found = new, True
    if not found and old.requires_grad:
        raise ValueError("the optimizer does not train this layer's weight; pass the optimizer "
                         "that trains the model (or None)")
    state = optimizer.state.pop(old, None)
    if state:
        optimizer.state[new] = {k: (convert(v) if isinstance(v, torch.Tensor) and k != "step"
                                    and v.shape == old.shape else v)
                                for k, v in state.items()}


def find_layers(model: nn.Module, layers: NamesArg = None, exclude: NamesArg = None) -> Dict[str, Layer]:
    """The prunable layers of ``model`` selected by ``layers`` / ``exclude`` (module names:
    a list, or a regular expression matched against the whole name), in model order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    occurrences = _module_occurrences(model)
    prunable = {key: (module, names) for key, (module, names) in occurrences.items()
                if isinstance(module, _DENSE_TYPES + _SPARSE_TYPES)}
    chosen = _match(layers, prunable, occurrences, "layers")
    dropped = _match(exclude, prunable, occurrences, "exclude") if exclude is not None else set()
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


def _match(names: NamesArg, prunable, occurrences, what: str) -> Optional[set]:
    if names is None:
        return None
    if isinstance(names, (str, re.Pattern)):
        regex = re.compile(names) if isinstance(names, str) else names
        return {key for key, (_, qnames) in prunable.items() if any(regex.fullmatch(n) for n in qnames)}
    by_name = {n: key for key, (_, qnames) in occurrences.items() for n in qnames}
    chosen = set()
    for n in names:
        n = n[: -len(".weight")] if n.endswith(".weight") else n
        if n not in by_name:
            raise ValueError(f"{what}: no module named '{n}' in the model")
        if by_name[n] not in prunable:
            module = occurrences[by_name[n]][0]
            raise ValueError(f"{what}: '{n}' is a {type(module).__name__}, not a prunable layer "
                             f"(nn.Linear, nn.Conv2d, SparseLinear, SparseConv2d)")
        chosen.add(by_name[n])
    return chosen
