"""Argument checks shared by the public wrappers and the fake kernels.

Each check raises TypeError (wrong kind or dtype) or ValueError (wrong shape or device)
with a message that names the argument and says what was expected. The wrappers run
them in eager mode and the fake kernels under torch.compile, so both fail the same way.
"""

from __future__ import annotations

import torch

# What each device's kernels compute in.
FLOAT_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float16, torch.bfloat16),
}


def tensor(name: str, value: object, ndim: int, layout: str) -> torch.Tensor:
    """`value` must be a tensor of `ndim` dimensions, described to the user as `layout`."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions {layout}, got shape {tuple(value.shape)}")
    return value


def float_dtype(name: str, value: torch.Tensor) -> None:
    """`value` must have a dtype the kernels of its device compute in."""
    allowed = FLOAT_DTYPES.get(value.device.type)
    if allowed is None:
        raise ValueError(f"{name} is on {value.device}; fastattn has kernels for cpu and cuda")
    if value.dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise TypeError(f"{name} on {value.device.type} must be one of {names}, got {value.dtype}")


def same_dtype(name: str, value: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    if value.dtype != other.dtype:
        raise TypeError(f"{name} must have the dtype of {other_name} ({other.dtype}), got {value.dtype}")


def same_device(name: str, value: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    if value.device != other.device:
        raise ValueError(f"{name} must be on the device of {other_name} ({other.device}), got {value.device}")


def size(name: str, value: torch.Tensor, dim: int, expected: int, meaning: str) -> None:
    """Dimension `dim` of `value` must equal `expected`, which is `meaning`."""
    if value.shape[dim] != expected:
        raise ValueError(
            f"{name} must have size {expected} in dimension {dim} ({meaning}), got shape {tuple(value.shape)}"
        )


def key_padding_mask(mask: object, batch: int, length: int, like: torch.Tensor) -> None:
    """An optional (B, T) bool mask, True = padding, on the device of `like`."""
    if mask is None:
        return
    tensor("key_padding_mask", mask, 2, "(B, T)")
    if mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be a bool tensor (True = padding), got {mask.dtype}")
    size("key_padding_mask", mask, 0, batch, "the batch size B")
    size("key_padding_mask", mask, 1, length, "the sequence length T")
    same_device("key_padding_mask", mask, "v", like)
