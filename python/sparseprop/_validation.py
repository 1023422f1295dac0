"""Argument checks shared by modules of the package (the public boundary's messages)."""
from __future__ import annotations

import warnings

import torch

__all__ = ["FLOAT_DTYPES", "STORAGE_DTYPES", "check_count", "check_float32_cpu",
           "check_linear_input", "check_storage_dtype", "renamed_keyword"]


def check_count(name: str, value, minimum: int = 0) -> int:
    """``value`` if it is an int (not a bool) ``>= minimum``; ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


_COMPUTE_DTYPES = (torch.float32, torch.float64)
_CAST_DTYPES = (torch.bfloat16, torch.float16)
FLOAT_DTYPES = _COMPUTE_DTYPES + _CAST_DTYPES  # every dtype a sparse layer accepts


# What a sparse layer may store its values (and bias) in; it computes in float32 from
# bfloat16/float16 storage, and on the float64 correctness path from float64 storage.
STORAGE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def check_storage_dtype(where: str, dtype) -> torch.dtype:
    """``dtype`` (None means float32) if a sparse layer can store its values in it."""
    if dtype is None:
        return torch.float32
    if dtype not in STORAGE_DTYPES:
        names = ", ".join(str(d).replace("torch.", "") for d in STORAGE_DTYPES)
        raise TypeError(f"{where} stores its weights as {names}, got dtype={dtype}")
    return dtype


def check_float32_cpu(t: torch.Tensor, name: str) -> None:
    """Raise if ``t`` is not a float32 CPU tensor: the one type the native kernels compute in."""
    check_float_cpu(t, name, (torch.float32,))


def check_float_cpu(t: torch.Tensor, name: str, dtypes=FLOAT_DTYPES) -> None:
    """Raise if ``t`` is not a CPU tensor of one of ``dtypes``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got device {t.device}; sparseprop runs on CPUs only")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must be {names}, got {t.dtype}; sparseprop computes in float32 "
                        f"(float64 as a correctness path)")


def check_linear_input(input: torch.Tensor, in_features: int) -> None:
    """Raise unless ``input`` is a float CPU tensor of shape (*, in_features)."""
    check_float_cpu(input, "input")
    if input.dim() == 0 or input.shape[-1] != in_features:
        raise ValueError(f"input must have shape (*, {in_features}), got {tuple(input.shape)}")


def renamed_keyword(where: str, new_name: str, new, old_name: str, old):
    """The value of keyword ``new_name`` whose old spelling ``old_name`` still works (with a
    DeprecationWarning). TypeError if both or neither are given (``None`` = not given)."""
    if old is not None:
        if new is not None:
            raise TypeError(f"{where}: give {new_name}= only ({old_name}= is its deprecated old name)")
        warnings.warn(f"{where}: {old_name}= is deprecated, use {new_name}= (same meaning)",
                      DeprecationWarning, stacklevel=3)
        return old
    if new is None:
        raise TypeError(f"{where}: {new_name} must be a number, got None (a required keyword)")
    return new
