"""Argument checks shared by modules of the package (the public boundary's messages)."""
from __future__ import annotations

import torch

__all__ = ["check_count", "check_float32_cpu"]


def check_count(name: str, value, minimum: int = 0) -> int:
    """``value`` if it is an int (not a bool) ``>= minimum``; ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_float32_cpu(t: torch.Tensor, name: str) -> None:
    """Raise if ``t`` is not a float32 CPU tensor: the one type the kernels compute in."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got device {t.device}; sparseprop runs on CPUs only")
    if t.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {t.dtype}; sparseprop computes in float32 "
                        f"(convert with .float())")
