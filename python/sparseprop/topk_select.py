"""Top-k selection in O(n): the threshold of the ``k`` highest scores without a sort.

Ranking a 4096x4096 layer with ``torch.topk`` takes ~0.4 s and ``torch.kthvalue`` ~0.3 s
(a copy plus a selection over all 16.7M scores). :func:`top_k_mask` runs a native radix
select on the scores' bits (two histogram passes and one pass writing the mask, on the
kernels' threads: 30-60 ms there on 2 threads). Scores with a NaN take the torch path
below, which ranks NaN as torch does. There, a strided sample brackets the threshold, one
pass counts the scores above the bracket, and the exact selection runs only among the few
scores inside it; if the bracket misses (adversarial data), the exact full ``kthvalue``
runs instead, so the result never depends on the sample.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from . import _C
from ._backend import get_num_threads

__all__ = ["kth_largest", "top_k_mask"]

_SMALL = 1 << 18      # below this many scores a plain kthvalue is as fast
_SAMPLE = 1 << 16     # scores in the sample that brackets the threshold
_MARGIN = 0.004       # bracket half-width, as a fraction of all scores


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry of 1-D float ``values`` (1 <= k <= n), as a 0-d tensor."""
    n = values.numel()
    if n <= _SMALL:
        return torch.kthvalue(values, n - k + 1).values
    stride = n // _SAMPLE
    sample = values[::stride]
    m = sample.numel()
    rank = (n - k) / n  # fraction of the scores below the threshold
    lo_i = max(0, int((rank - _MARGIN) * m))
    hi_i = min(m - 1, int((rank + _MARGIN) * m) + 1)
    ordered = torch.sort(sample).values
    lo, hi = ordered[lo_i], ordered[hi_i]
    above = int(torch.count_nonzero(values > hi))  # (bool .sum() is 5x slower)
    need = k - above  # how many of the threshold's side must come from [lo, hi]
    if need >= 1:
        band = values[torch.logical_and(values >= lo, values <= hi)]
        if need <= band.numel():
            return torch.kthvalue(band, band.numel() - need + 1).values
    return torch.kthvalue(values, n - k + 1).values  # the bracket missed: exact fallback


def top_k_mask(scores: torch.Tensor, k: int, allowed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Boolean mask (shape of ``scores``) of exactly ``k`` highest scores; ties at the
    threshold are broken by position (first ones kept). With ``allowed`` (a bool tensor
    of as many entries), only allowed scores count, and ``k`` must not exceed their number."""
    flat = scores.detach().reshape(-1)
    n = flat.numel()
    if allowed is None and k >= n:
        return torch.ones(scores.shape, dtype=torch.bool)
    if k <= 0:
        return torch.zeros(scores.shape, dtype=torch.bool)
    native = _native_top_k(flat, k, allowed)
    if native is not None:
        return native.view(scores.shape)
    if allowed is not None:  # a NaN score: the torch path over the allowed ones only
        flat = flat.float().masked_fill(~allowed.reshape(-1), -float("inf"))
    threshold = kth_largest(flat, k)
    keep = flat > threshold
    missing = k - int(torch.count_nonzero(keep))
    if missing > 0:  # equal scores at the threshold: keep the first ``missing`` of them
        ties = torch.nonzero(flat == threshold).flatten()[:missing]
        keep[ties] = True
    return keep.view(scores.shape)


def _native_top_k(flat: torch.Tensor, k: int, allowed: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The native select's mask, or None if a considered score is NaN (ValueError if
    fewer than ``k`` scores are allowed)."""
    values = flat.float().contiguous().numpy()
    gate = None
    if allowed is not None:
        gate = allowed.detach().reshape(-1).bool().contiguous().numpy().view(np.uint8)
    threads = get_num_threads()
    top = _C.top_k_threshold(values, gate, k, threads)
    if top is None:
        return None
    mask = torch.empty(flat.numel(), dtype=torch.bool)
    _C.top_k_fill(values, gate, top[0], top[1], threads, mask.numpy().view(np.uint8))
    return mask
