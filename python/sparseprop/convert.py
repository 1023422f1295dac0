"""Whole-model conversion: dense <-> sparse layers, and a per-layer memory summary.

* :func:`sparsify` replaces ``nn.Linear`` / ``nn.Conv2d`` (and transformers' GPT-2
  ``Conv1D``) modules by ``SparseLinear`` / ``SparseConv2d`` (``SparseConv1D``), keeping the zeros they already have (including masks left by
  ``torch.nn.utils.prune``) or pruning them to a target sparsity by magnitude, optionally
  only where the sparse layer is measurably faster on a sample input.
* :func:`densify` turns every sparse layer back into its dense twin (identical outputs).
* :func:`summary` lists each layer's sparsity, nonzeros and memory, sparse vs dense.
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ._sparse_module import SparseWeightModule, magnitude_keep
from ._tables import Table, fmt_bytes, shape_str
from ._timing import medians_ms, pass_items, time_interleaved_samples
from .conv.batchnorm import layout_resident_batchnorms, plain_batchnorms
from .csr import check_sparsity, nnz_for
from .hf_conv1d import SparseConv1D, is_conv1d
from .modules import SparseConv2d
from .module_tree import (NamesArg, conversion_blocker, deepcopy_model, dense_twin, dense_types,
                          effective_tensor, empty_sparse_twin, module_occurrences, replace_all,
                          select_modules, shared_parameter_users, sparse_class)

__all__ = ["sparsify", "densify", "summary", "ConversionReport", "ModelSummary"]


def _fmt_ms(t: Optional[float]) -> str:
    return "-" if t is None else f"{t:.3f}"


def _foreign_hooks(module: nn.Module) -> List[str]:
    """Kinds of hooks on ``module`` other than torch.nn.utils.prune's (lost on conversion)."""
    from torch.nn.utils import prune

    kinds = []
    pre = [h for h in module._forward_pre_hooks.values()
           if not isinstance(h, prune.BasePruningMethod)]
    for label, hooks in (("forward pre-hooks", pre), ("forward hooks", module._forward_hooks),
                         ("backward hooks", module._backward_hooks),
                         ("state_dict hooks", module._state_dict_hooks)):
        if len(hooks):
            kinds.append(label)
    return kinds


# ----------------------------------------------------------------------------------------
# reports
# ----------------------------------------------------------------------------------------
class ConversionReport(list):
    """What :func:`sparsify` did (``sparsify(..., return_report=True)``): one dict per
    candidate layer, in model order.

    Keys: ``layer`` (qualified name), ``type``, ``shape`` (dense weight shape),
    ``sparsity`` and ``nnz`` (of the pattern the sparse layer has or would have),
    ``dense_ms`` / ``sparse_ms`` (median forward+backward time, ``None`` unless timed),
    ``decision`` (``"sparse"`` or ``"dense"``) and ``reason``.
    ``model`` is the converted model (the deep copy with ``inplace=False``).
    ``str(report)`` is a table.
    """

    def __init__(self, rows: Iterable[Dict[str, Any]] = (), model: Optional[nn.Module] = None):
        super().__init__(rows)
        self.model = model

    @property
    def converted(self) -> List[str]:
        """Names of the layers that became sparse."""
        return [r["layer"] for r in self if r["decision"] == "sparse"]

    @property
    def kept_dense(self) -> List[str]:
        return [r["layer"] for r in self if r["decision"] == "dense"]

    def __str__(self) -> str:
        headers = ("layer", "type", "shape", "sparsity", "nnz", "dense ms", "sparse ms",
                   "decision", "reason")
        rows = [(r["layer"] or "(model)", r["type"], shape_str(r["shape"]),
                 "-" if r["sparsity"] is None else f"{r['sparsity']:.4f}",
                 "-" if r["nnz"] is None else r["nnz"], _fmt_ms(r["dense_ms"]),
                 _fmt_ms(r["sparse_ms"]), r["decision"], r["reason"]) for r in self]
        table = Table(headers, "lllrrrrll").text(rows)
        return f"{table}\n{len(self.converted)} of {len(self)} candidate layers converted to sparse"

    def __repr__(self) -> str:
        return str(self)


class ModelSummary:
    """Per-layer sparsity and memory of a model; see :func:`summary`."""

    def __init__(self, rows: List[Dict[str, Any]], totals: Dict[str, Any]):
        self.rows = rows
        self.totals = totals

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def __str__(self) -> str:
        headers = ("layer", "type", "shape", "nnz", "sparsity", "sparse form", "dense",
                   "sparse/dense", "stored now")

        def ratio(a, b):
            return f"{a / b:.3f}" if b else "-"

        rows = [(r["layer"] or "(model)", r["type"], shape_str(r["shape"]), r["nnz"],
                 f"{r['sparsity']:.4f}", fmt_bytes(r["sparse_bytes"]),
                 fmt_bytes(r["dense_bytes"]), ratio(r["sparse_bytes"], r["dense_bytes"]),
                 fmt_bytes(r["bytes"])) for r in self.rows]
        t = self.totals
        footer = ("total", "", "", t["nnz"], f"{t['sparsity']:.4f}", fmt_bytes(t["sparse_bytes"]),
                  fmt_bytes(t["dense_bytes"]), ratio(t["sparse_bytes"], t["dense_bytes"]),
                  fmt_bytes(t["bytes"]))
        table = Table(headers, "lll" + "r" * 6).text(rows, footer)
        other = t["other_bytes"]
        return (f"{table}\nwhole model as stored: {fmt_bytes(t['bytes'] + other)} "
                f"(all dense: {fmt_bytes(t['dense_bytes'] + other)}), of which "
                f"{fmt_bytes(other)} in other parameters and buffers")

    def __repr__(self) -> str:
        return str(self)


# ----------------------------------------------------------------------------------------
# sparsify
# ----------------------------------------------------------------------------------------
def sparsify(model: nn.Module, sparsity: Optional[float] = None, *,
             types: Optional[Sequence[type]] = None, names: NamesArg = None,
             min_sparsity: float = 0.5, inplace: bool = True, only_if_faster: bool = False,
             sample_input: Any = None, margin: float = 0.1, reps: int = 7,
             warmup: int = 2, return_report: bool = False):
    """Replace ``nn.Linear`` / ``nn.Conv2d`` layers of ``model`` by sparse ones.

    Each candidate layer (an instance of one of ``types``, selected by ``names`` if given)
    gets a pattern:

    * ``sparsity=None``: the zeros it already has are kept. A layer pruned with
      ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``) uses its mask as the
      pattern (a weight that is 0 inside the mask stays trainable) and loses the
      reparametrization; a pruned bias is folded in as ``bias_orig * bias_mask``.
    * ``sparsity=s``: the largest-magnitude weights are kept, among those allowed
      (existing nonzeros, or the prune mask), so the layer's sparsity is
      ``max(s, existing sparsity)``.

    A layer is converted only if its resulting sparsity is ``>= min_sparsity``.
    Layers whose weights are not float32 on the CPU, whose weight is shared with another
    module, or that are subclasses overriding ``forward`` stay dense (see ``reason``).

    Args:
        names: ``None`` (all), a list of qualified module names (unknown names raise), or
            a regular expression (``str`` or compiled) that must match a whole name
            (``re.fullmatch``), e.g. ``r"layer[34]\\..*"``.
        inplace: ``False`` converts a ``copy.deepcopy`` and leaves ``model`` untouched.
        only_if_faster: time every candidate dense vs sparse (forward + backward on its real
            input, captured with forward pre-hooks during one forward of ``sample_input``
            in eval mode without gradients) and keep the sparse layer only if its median
            time is below ``(1 - margin)`` times the dense one: near-ties stay dense.
            ``warmup`` untimed and ``reps`` timed runs each, interleaved.
        sample_input: a tensor (``model(x)``), a tuple/list (``model(*args)``) or a dict
            (``model(**kwargs)``); required with ``only_if_faster``.

        types: the classes to convert; default ``nn.Linear``, ``nn.Conv2d`` and, when
            transformers is imported, its GPT-2 ``Conv1D`` (becomes a :class:`SparseConv1D`).
        return_report: ``True`` returns the :class:`ConversionReport` instead of the model.

    Returns the converted model (``model`` itself, or its copy with ``inplace=False``; the
    sparse layer if ``model`` is itself a convertible layer), so ``model = sparsify(model)``
    works. With ``return_report=True`` it returns the :class:`ConversionReport` (a list of
    dict rows, printable as a table) whose ``.model`` is the converted model: what
    ``sparsify`` returned before 0.2 (code reading the report: add ``return_report=True``).

    New layers keep the train/eval mode and ``requires_grad`` of the old ones. Hooks
    registered on a replaced module (other than pruning's) are not carried over; a
    warning names them.
    """
    if sparsity is not None:
        sparsity = check_sparsity(sparsity)
    min_sparsity = check_sparsity(min_sparsity, "min_sparsity")
    if types is None:
        types = dense_types()
    types = tuple(types) if isinstance(types, (list, tuple)) else (types,)
    convertible = dense_types()
    for t in types:
        if not (isinstance(t, type) and issubclass(t, convertible)):
            raise TypeError(f"types must be nn.Linear / nn.Conv2d / transformers Conv1D "
                            f"(sub)classes, got {t!r}")
    if only_if_faster and sample_input is None:
        raise ValueError("only_if_faster=True needs a sample_input to time the layers on")
    if sample_input is not None and not only_if_faster:
        raise ValueError("sample_input is only used with only_if_faster=True")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got {margin!r}")
    if reps < 1 or warmup < 0:
        raise ValueError(f"reps must be >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")

    if not inplace:
        model = deepcopy_model(model)
    occurrences = module_occurrences(model)
    selected = select_modules(names, occurrences, lambda m: isinstance(m, types), "names",
                              f"one of the types to convert ({', '.join(t.__name__ for t in types)})")
    users = shared_parameter_users(model)  # tied weights must stay dense

    rows: List[Dict[str, Any]] = []
    plans = []  # (row, module, qualified names, sparse module)
    for key, (module, qnames) in occurrences.items():
        if isinstance(module, SparseWeightModule) or not isinstance(module, types):
            continue
        if selected is not None and key not in selected:
            continue
        sparse_cls = sparse_class(module)
        row = dict(layer=qnames[0], type=type(module).__name__, shape=(), sparsity=None,
                   nnz=None, dense_ms=None, sparse_ms=None, decision="dense", reason="")
        rows.append(row)
        weight, mask, weight_param = effective_tensor(module, "weight")
        row["shape"] = tuple(weight.shape)
        if sparse_cls is SparseConv1D:  # Conv1D stores (in, out): the pattern is the transpose
            weight, mask = weight.t(), None if mask is None else mask.t()
        blocker = conversion_blocker(module, weight_param, users)
        if blocker is not None:
            row["reason"] = blocker
            continue
        allowed = mask if mask is not None else weight != 0
        keep = allowed if sparsity is None else magnitude_keep(weight, allowed, sparsity)
        nnz = int(keep.sum())
        row["nnz"] = nnz
        row["sparsity"] = 1.0 - nnz / weight.numel() if weight.numel() else 0.0
        if nnz > nnz_for(min_sparsity, weight.numel()):  # same rounding as ``sparsity``
            row["reason"] = f"sparsity below min_sparsity={min_sparsity:g}"
            continue
        bias, _, bias_param = effective_tensor(module, "bias")
        # Never build a layer out of inference tensors, even under torch.inference_mode().
        with torch.inference_mode(False):
            sparse = empty_sparse_twin(module, bias is not None)
            sparse._load_dense(weight, bias, keep, None)
        sparse.train(module.training)
        sparse.values.requires_grad_(weight_param.requires_grad)
        if bias_param is not None:
            sparse.bias.requires_grad_(bias_param.requires_grad)
        row["decision"], row["reason"] = "sparse", "pruned mask" if mask is not None else (
            "existing zeros" if sparsity is None else f"magnitude pruning to {sparsity:g}")
        plans.append((row, module, qnames, sparse))

    if only_if_faster and plans:
        _time_candidates(model, plans, sample_input, margin, reps, warmup)

    root = model
    for row, module, qnames, sparse in plans:
        if row["decision"] != "sparse":
            continue
        hooks = _foreign_hooks(module)
        if hooks:
            warnings.warn(f"sparsify: the {', '.join(hooks)} on '{qnames[0]}' are not carried "
                          f"over to its SparseLayer replacement", stacklevel=2)
        new_root = replace_all(model, qnames, sparse)
        if "" in qnames:
            root = new_root
    if any(isinstance(m, SparseConv2d) for m in root.modules()):
        # BatchNorms between sparse convs then normalise the kernels' layout in place.
        layout_resident_batchnorms(root)
    report = ConversionReport(rows, root)
    return report if return_report else root


def _call(model: nn.Module, sample_input: Any):
    if isinstance(sample_input, dict):
        return model(**sample_input)
    if isinstance(sample_input, (tuple, list)):
        return model(*sample_input)
    return model(sample_input)


def _capture_inputs(model: nn.Module, modules: Sequence[nn.Module],
                    sample_input: Any) -> Dict[int, Tuple[torch.Tensor, bool]]:
    """id(module) -> (copy of its first positional input, whether that input is one of the
    sample input's own tensors), from one eval-mode, no-grad forward of ``model``."""
    given = (sample_input.values() if isinstance(sample_input, dict) else
             sample_input if isinstance(sample_input, (tuple, list)) else (sample_input,))
    given_ids = {id(t) for t in given if isinstance(t, torch.Tensor)}
    captured: Dict[int, Tuple[torch.Tensor, bool]] = {}

    def hook(mod, args):
        if id(mod) not in captured and args and isinstance(args[0], torch.Tensor):
            captured[id(mod)] = (args[0].detach().clone(), id(args[0]) in given_ids)

    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        model.eval()
        with torch.no_grad():
            _call(model, sample_input)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return captured


def _time_candidates(model, plans, sample_input, margin, reps, warmup) -> None:
    """Fill dense_ms / sparse_ms and decide dense vs sparse for every plan."""
    inputs = _capture_inputs(model, [p[1] for p in plans], sample_input)
    for row, module, _, sparse in plans:
        if id(module) not in inputs:
            row["decision"], row["reason"] = "dense", "not reached by sample_input"
            continue
        x, is_model_input = inputs[id(module)]
        if x.dtype != torch.float32:
            row["decision"], row["reason"] = "dense", f"{x.dtype} input"
            continue
        dense = sparse.to_dense()
        sparse_copy = copy.deepcopy(sparse)  # timing must not leave grads on the real layer
        # The model's own input needs no gradient; an inner activation does.
        dense_ms, sparse_ms = _time_pair(dense, sparse_copy, x, not is_model_input, reps, warmup)
        row["dense_ms"], row["sparse_ms"] = dense_ms, sparse_ms
        speedup = dense_ms / sparse_ms if sparse_ms > 0 else float("inf")
        if sparse_ms <= (1.0 - margin) * dense_ms:
            row["reason"] = f"{speedup:.2f}x faster"
        else:
            row["decision"] = "dense"
            row["reason"] = f"not {margin:.0%} faster ({speedup:.2f}x)"


def _time_pair(dense: nn.Module, sparse: nn.Module, x: torch.Tensor, needs_grad: bool,
               reps: int, warmup: int) -> Tuple[float, float]:
    """Median forward+backward milliseconds of ``dense`` and ``sparse`` on ``x``, timed
    interleaved by the package's one timer (the benchmarks' too)."""
    x = x.detach().clone().requires_grad_(needs_grad)
    with torch.no_grad():
        grad_out = torch.randn_like(dense(x))
    with torch.enable_grad():  # sparsify may run under no_grad
        samples = time_interleaved_samples(
            [pass_items(dense, x, grad_out).fwdbwd, pass_items(sparse, x, grad_out).fwdbwd],
            reps=reps, warmup=warmup)
    dense_ms, sparse_ms = medians_ms(samples)
    return dense_ms, sparse_ms


# ----------------------------------------------------------------------------------------
# densify
# ----------------------------------------------------------------------------------------
def densify(model: nn.Module, inplace: bool = True) -> nn.Module:
    """Replace every ``SparseLinear`` / ``SparseConv2d`` of ``model`` by its dense twin
    (``to_dense()``: zeros off the pattern, same bias, identical outputs) and return the
    model (a ``copy.deepcopy`` with ``inplace=False``). Train/eval mode and
    ``requires_grad`` are kept. If ``model`` is itself a sparse layer, its dense twin is
    returned (a module cannot change class in place)."""
    if not inplace:
        model = deepcopy_model(model)
    root = model
    for module, qnames in list(module_occurrences(model).values()):
        if not isinstance(module, SparseWeightModule):
            continue
        new_root = replace_all(model, qnames, dense_twin(module))
        if "" in qnames:
            root = new_root
    return plain_batchnorms(root)


# ----------------------------------------------------------------------------------------
# summary
# ----------------------------------------------------------------------------------------
def _nbytes(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def _own_state_bytes(module: nn.Module) -> int:
    """Bytes of a module's own parameters and persistent buffers (not its children's)."""
    total = sum(_nbytes(p) for p in module._parameters.values())
    skip = module._non_persistent_buffers_set
    return total + sum(_nbytes(b) for n, b in module._buffers.items() if n not in skip)


def summary(model: nn.Module) -> ModelSummary:
    """Per-layer sparsity, nonzeros and memory of ``model``'s Linear/Conv2d layers, sparse or
    dense, with totals. ``print(sparseprop.summary(model))`` prints a table.

    Each row: ``layer``, ``type``, ``shape`` (dense weight shape), ``nnz``, ``sparsity``,
    ``bytes`` (what the layer stores now: for a sparse layer values + indices + indptr +
    bias, i.e. its state_dict; for a dense one weight + bias, plus the mask of a pruned
    layer), ``dense_bytes`` (float32 weight + bias) and ``sparse_bytes`` (what the layer
    would take in sparse form). ``totals`` sums the layers and adds ``other_bytes``:
    every other parameter and persistent buffer of the model. ``nnz`` of a dense layer
    counts its nonzero weights (its mask's entries if pruned). Derived data a sparse
    layer rebuilds itself is not counted: SparseLinear's transposed pattern for the
    input gradient (12 bytes per nonzero + 8 per input feature), SparseConv2d's index
    plans (per input shape).
    """
    rows = []
    layer_ids = set()
    for name, module in model.named_modules():
        if isinstance(module, SparseWeightModule):
            shape, nnz = tuple(module.weight_shape), module.nnz
            rows_ = module.weight_shape[0]
            bias = module.bias
            stored = _own_state_bytes(module)
            kind = "Sparse"
        elif isinstance(module, (nn.Linear, nn.Conv2d)) or is_conv1d(module):
            weight, mask, _ = effective_tensor(module, "weight")
            bias, _, _ = effective_tensor(module, "bias")
            shape = tuple(weight.shape)
            nnz = int(torch.count_nonzero(weight if mask is None else mask))
            rows_ = shape[1] if is_conv1d(module) else shape[0]  # Conv1D's weight is (in, out)
            stored = _own_state_bytes(module)
            kind = "Dense"
        else:
            continue
        layer_ids.add(id(module))
        numel = math.prod(shape)
        bias_bytes = 0 if bias is None else 4 * bias.numel()
        rows.append(dict(layer=name, type=type(module).__name__, kind=kind, shape=shape,
                         numel=numel, nnz=nnz,
                         sparsity=1.0 - nnz / numel if numel else 0.0,
                         bytes=stored, dense_bytes=4 * numel + bias_bytes,
                         sparse_bytes=8 * nnz + 8 * (rows_ + 1) + bias_bytes))
    other = 0
    for module in model.modules():
        if id(module) not in layer_ids:
            other += _own_state_bytes(module)
    numel = sum(r["numel"] for r in rows)
    nnz = sum(r["nnz"] for r in rows)
    totals = dict(numel=numel, nnz=nnz, sparsity=1.0 - nnz / numel if numel else 0.0,
                  bytes=sum(r["bytes"] for r in rows),
                  sparse_bytes=sum(r["sparse_bytes"] for r in rows),
                  dense_bytes=sum(r["dense_bytes"] for r in rows), other_bytes=other)
    return ModelSummary(rows, totals)
