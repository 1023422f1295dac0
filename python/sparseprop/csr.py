"""CSR sparsity patterns: construction from masks, validation, the transposed pattern."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from . import _C
from ._backend import get_num_threads
from .topk_select import top_k_mask

INDEX_LIMIT = 2**31 - 1  # column indices are stored as int32


def check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    """Return ``sparsity`` as a float, or raise ValueError if it is not in [0, 1]."""
    if isinstance(sparsity, (str, bytes)):
        raise TypeError(f"{name} must be a number in [0, 1], got {sparsity!r}")
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number in [0, 1], got {sparsity!r}") from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {sparsity!r}")
    return value


def nnz_for(sparsity: float, numel: int) -> int:
    """How many weights survive at ``sparsity`` (rounded to the nearest integer)."""
    return int(round((1.0 - sparsity) * numel))


class CSRPattern:
    """The nonzero positions of a (rows, cols) matrix in CSR form.

    ``indptr`` (int64, rows + 1) and ``indices`` (int32, nnz, sorted within each
    row) are validated on construction. The transposed pattern used by the input
    gradient (``t_indptr``, ``t_indices``, and ``t_perm``: where each transposed
    nonzero sits in the values array) is computed on first use.

    The arrays are private copies owned by numpy (the tensors are views of them),
    so the kernels' pointers stay valid even if a tensor's storage is swapped.
    A checksum taken at validation tells whether they were edited in place since
    (see :meth:`is_current`); derived data is only ever used while it matches.
    """

    __slots__ = ("rows", "cols", "indptr", "indices", "_t", "_np", "_t_np", "_sum", "_ptrs")

    def __init__(self, indptr: torch.Tensor, indices: torch.Tensor, shape: Tuple[int, int]) -> None:
        self._set_shape(shape)
        self._own(_as_index(indptr, torch.int64, "indptr"),
                  _as_index(indices, torch.int32, "indices", upper=INDEX_LIMIT))

    @classmethod
    def adopt(cls, indptr: np.ndarray, indices: np.ndarray, shape: Tuple[int, int]) -> "CSRPattern":
        """A pattern over int64 ``indptr`` and int32 ``indices`` numpy arrays that nothing
        else holds (just built, e.g. by ``_C.mask_column_indices``): validated but not
        copied, which saves two full-size copies on a large layer."""
        if indptr.dtype != np.int64 or indices.dtype != np.int32:
            raise TypeError(f"adopt needs int64 indptr and int32 indices, got {indptr.dtype} "
                            f"and {indices.dtype}")
        pattern = cls.__new__(cls)
        pattern._set_shape(shape)
        pattern._own(np.ascontiguousarray(indptr), np.ascontiguousarray(indices))
        return pattern

    def _set_shape(self, shape: Tuple[int, int]) -> None:
        rows, cols = int(shape[0]), int(shape[1])
        if rows < 0 or cols < 0:
            raise ValueError(f"pattern shape must be non-negative, got {shape}")
        if cols > INDEX_LIMIT:
            raise ValueError(f"at most {INDEX_LIMIT} columns are supported, got {cols}")
        self.rows, self.cols = rows, cols

    def _own(self, indptr: np.ndarray, indices: np.ndarray) -> None:
        """Take private arrays (see _as_index), validate them, reset what derives from them."""
        _C.check_csr(indptr, indices, self.rows, self.cols)
        self._np = (indptr, indices)
        self.indptr, self.indices = torch.from_numpy(indptr), torch.from_numpy(indices)
        self._ptrs = (self.indptr.data_ptr(), self.indices.data_ptr())
        self._sum = _C.pattern_checksum(indptr, indices)
        self._t = self._t_np = None

    # in-place edits -------------------------------------------------------------------
    def is_current(self) -> bool:
        """Whether ``indptr`` / ``indices`` still hold what was validated: same storage,
        same contents (a native O(rows + nnz) checksum, which also sees writes through
        ``.data`` or numpy views that torch's version counter misses)."""
        return ((self.indptr.data_ptr(), self.indices.data_ptr()) == self._ptrs
                and _C.pattern_checksum(*self._np) == self._sum)

    def expect_current(self) -> None:
        """Raise RuntimeError if the pattern was edited in place since it was validated:
        a computation begun on the old pattern (a forward pass whose backward is pending,
        a cached plan) would otherwise mix the two."""
        if not self.is_current():
            raise RuntimeError("the sparsity pattern (indptr/indices) was edited in place after "
                               "it was validated (e.g. between a forward pass and its backward); "
                               "its derived data would be stale. Change patterns between steps, "
                               "with set_pattern / sparseprop.update_pattern")

    # construction -----------------------------------------------------------------
    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> "CSRPattern":
        """Pattern of the nonzero (or True) entries of a 2-D mask."""
        if mask.dim() != 2:
            raise ValueError(f"mask must be 2-D, got shape {tuple(mask.shape)}")
        mask = mask.detach().to("cpu") != 0
        counts = mask.sum(dim=1)
        indptr = torch.zeros(mask.shape[0] + 1, dtype=torch.int64)
        torch.cumsum(counts, dim=0, out=indptr[1:])
        indices = mask.nonzero()[:, 1].to(torch.int32)  # row-major, so sorted per row
        return cls(indptr, indices, tuple(mask.shape))

    @classmethod
    def random(cls, rows: int, cols: int, sparsity: float,
               generator: Optional[torch.Generator] = None) -> "CSRPattern":
        """Uniformly random positions with exactly ``round((1 - sparsity) * rows * cols)`` nonzeros."""
        sparsity = check_sparsity(sparsity)
        numel = rows * cols
        nnz = nnz_for(sparsity, numel)
        # numpy samples without replacement in O(nnz) (torch.randperm is O(numel));
        # the seed comes from torch's generator so torch.manual_seed governs it.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        if nnz <= numel // 2:
            flat = np.sort(rng.choice(numel, nnz, replace=False, shuffle=False))
        else:  # sample the zeros instead
            keep = np.ones(numel, dtype=bool)
            keep[rng.choice(numel, numel - nnz, replace=False, shuffle=False)] = False
            flat = np.flatnonzero(keep)
        flat = torch.from_numpy(flat.astype(np.int64))
        row_of = torch.div(flat, max(cols, 1), rounding_mode="floor")
        counts = torch.bincount(row_of, minlength=rows)
        indptr = torch.zeros(rows + 1, dtype=torch.int64)
        torch.cumsum(counts, dim=0, out=indptr[1:])
        return cls(indptr, (flat - row_of * cols).to(torch.int32), (rows, cols))

    # properties ----------------------------------------------------------------------
    @property
    def shape(self) -> Tuple[int, int]:
        return (self.rows, self.cols)

    @property
    def nnz(self) -> int:
        return int(self.indices.numel())

    @property
    def sparsity(self) -> float:
        numel = self.rows * self.cols
        return 1.0 - self.nnz / numel if numel else 0.0

    def row_indices(self) -> torch.Tensor:
        """Row of each nonzero (int64), in storage order."""
        counts = self.indptr[1:] - self.indptr[:-1]
        return torch.repeat_interleave(torch.arange(self.rows), counts)

    @property
    def transposed(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(t_indptr, t_indices, t_perm)``: the pattern of the transpose."""
        self.expect_current()
        if self._t is None:
            t_indptr, t_indices, perm = _C.transpose_csr(*self._np, self.cols, get_num_threads())
            self._t = (torch.from_numpy(t_indptr), torch.from_numpy(t_indices),
                       torch.from_numpy(perm))
        return self._t

    def numpy(self) -> Tuple[np.ndarray, np.ndarray]:
        """(indptr, indices) as numpy views, ready for the native kernels."""
        return self._np

    def transposed_numpy(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``transposed`` as numpy views (checked against in-place edits, like ``transposed``)."""
        if self._t_np is None:
            self._t_np = tuple(t.numpy() for t in self.transposed)
        else:
            self.expect_current()
        return self._t_np

    # dense conversions -----------------------------------------------------------------
    def gather(self, dense: torch.Tensor) -> torch.Tensor:
        """Values of a dense (rows, cols) tensor at the pattern's positions."""
        if tuple(dense.shape) != self.shape:
            raise ValueError(f"expected a tensor of shape {self.shape}, got {tuple(dense.shape)}")
        return dense[self.row_indices(), self.indices.long()]

    def to_dense(self, values: torch.Tensor) -> torch.Tensor:
        """Dense (rows, cols) tensor with ``values`` at the pattern (differentiable)."""
        if values.shape != (self.nnz,):
            raise ValueError(f"values must have shape ({self.nnz},), got {tuple(values.shape)}")
        flat = self.row_indices() * self.cols + self.indices.long()
        dense = values.new_zeros(self.rows * self.cols)
        return dense.index_put((flat,), values).view(self.rows, self.cols)

    def mask(self) -> torch.Tensor:
        """Boolean (rows, cols) mask of the pattern."""
        return self.to_dense(torch.ones(self.nnz)).bool()

    def __getstate__(self):
        # The transposed pattern is derived data: re-derived after unpickling rather
        # than trusted.
        return {"rows": self.rows, "cols": self.cols, "indptr": self.indptr,
                "indices": self.indices}

    def __setstate__(self, state):
        self.rows, self.cols = state["rows"], state["cols"]
        self._own(_as_index(state["indptr"], torch.int64, "indptr"),
                  _as_index(state["indices"], torch.int32, "indices", upper=INDEX_LIMIT))

    def __repr__(self) -> str:
        return f"CSRPattern(shape={self.shape}, nnz={self.nnz}, sparsity={self.sparsity:.4f})"


def _as_index(t: torch.Tensor, dtype: torch.dtype, name: str, upper: Optional[int] = None) -> np.ndarray:
    if not isinstance(t, torch.Tensor):
        array = np.asarray(t)
        if array.size == 0:
            array = array.astype(np.int64)  # [] would otherwise be float
        t = torch.as_tensor(array)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got device {t.device}")
    if t.dtype != dtype:
        # Range-check before narrowing so a huge value cannot wrap into a valid one.
        if upper is not None and t.numel() and (int(t.max()) > upper or int(t.min()) < -upper):
            raise ValueError(f"{name} has values outside the int32 range")
        t = t.to(dtype)
    # A private copy owned by numpy: later edits to the caller's tensor cannot bypass
    # validation, and swapping a tensor's storage cannot free what the kernels read.
    return np.array(t.detach().contiguous().numpy(), copy=True)


def topk_mask(score: torch.Tensor, k: int, allowed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Boolean mask (``score``'s shape) of the ``k`` highest scores, among ``allowed`` (a
    mask of the same shape) if given: at most ``allowed.sum()`` entries. The one top-k mask
    builder (``from_dense`` / ``sparsify`` magnitude pruning and every pruner use it), O(n)
    (see :mod:`.topk_select`), with no copy of the scores; keeping every allowed weight
    ranks nothing."""
    flat = score.detach().flatten()
    if flat.dtype != torch.float32:
        flat = flat.float()
    if allowed is None:
        return top_k_mask(flat, k).view(score.shape)
    allowed = allowed.reshape(-1).bool()
    n_allowed = int(torch.count_nonzero(allowed))
    if k >= n_allowed:
        return allowed.clone().view(score.shape)
    return top_k_mask(flat, k, allowed).view(score.shape)
