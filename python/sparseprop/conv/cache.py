"""PlanCache: a layer's convolution plans by input shape, the explicit cache object that
SparseConv2d owns (``layer._plans``) and the custom op keeps per spec."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Iterator, Optional

from ..csr import CSRPattern

_MAX_CACHED_PLANS = 8


class PlanCache:
    """A layer's index plans by input shape, for one pattern: least recently used
    first out beyond ``capacity``, safe to share between threads.

    A plan derives from the pattern it was built for, so asking with another
    pattern object drops every plan (the layer's pattern changed)."""

    def __init__(self, capacity: int = _MAX_CACHED_PLANS) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"capacity must be an int >= 0 (0: keep no plan), got {capacity!r}")
        self.capacity = capacity
        self._plans: "OrderedDict[tuple, object]" = OrderedDict()
        self._pattern: Optional[CSRPattern] = None
        self._lock = threading.Lock()

    def get(self, pattern: CSRPattern, key: tuple, build: Callable[[], object]):
        """The plan for ``key`` under ``pattern``, built (outside the lock) if missing."""
        with self._lock:
            if self._pattern is not pattern:
                self._plans.clear()
                self._pattern = pattern
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                return plan
        plan = build()
        with self._lock:
            if self._pattern is pattern:
                self._plans[key] = plan
                self._plans.move_to_end(key)
                while len(self._plans) > self.capacity:
                    self._plans.popitem(last=False)
        return plan

    def clear(self) -> None:
        with self._lock:
            self._plans.clear()
            self._pattern = None

    def __len__(self) -> int:
        return len(self._plans)

    def __iter__(self) -> Iterator[tuple]:
        with self._lock:
            return iter(list(self._plans))

    def __reduce__(self):
        return (PlanCache, (self.capacity,))  # copies start empty (and get their own lock)
