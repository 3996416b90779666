"""Structured sparse-attention patterns as per-query key lists for ``sparse_attention``.

Each function returns int32 indices of shape (1, 1, T, L): row i lists, in increasing order,
the keys j that query i attends to, with -1 filling the slots after them. L is the widest
row. The lists are built from per-row candidates, never from a (T, T) matrix, so memory is
O(T L).
"""

from __future__ import annotations

import torch

__all__ = ["strided", "fixed", "local_global"]


def strided(T: int, stride: int, *, causal: bool = False, device=None) -> torch.Tensor:
    """Keys j with |i - j| < stride or (i - j) % stride == 0: the bidirectional form of the
    Sparse Transformer's "strided" pattern (Child et al. 2019)."""
    _check_length(T)
    _check_positive("stride", stride)
    i = torch.arange(T, device=device)[:, None]
    window = i + torch.arange(-(stride - 1), stride, device=device)
    same_phase = (i % stride) + stride * torch.arange(-(-T // stride), device=device)
    return _rows(torch.cat([window, same_phase], dim=1), T, causal)


def fixed(T: int, stride: int, summary: int, *, causal: bool = False, device=None) -> torch.Tensor:
    """Keys j with j // stride == i // stride or j % stride >= stride - summary: the
    bidirectional form of the Sparse Transformer's "fixed" pattern."""
    _check_length(T)
    _check_positive("stride", stride)
    if not (isinstance(summary, int) and 1 <= summary <= stride):
        raise ValueError(f"summary must be an integer from 1 to stride = {stride}, got {summary!r}")
    i = torch.arange(T, device=device)[:, None]
    block = (i // stride) * stride + torch.arange(stride, device=device)
    blocks = torch.arange(-(-T // stride), device=device)[:, None] * stride
    columns = (blocks + torch.arange(stride - summary, stride, device=device)).flatten()
    return _rows(torch.cat([block, columns.expand(T, -1)], dim=1), T, causal)


def local_global(T: int, window: int, global_idx, *, causal: bool = False, global_queries: bool = True,
                 device=None) -> torch.Tensor:
    """Keys j with |i - j| <= window, or j in global_idx, or i in global_idx (a global
    query attends to every key): the local plus global pattern of QDS-Transformer and
    Longformer. With any global query, L is T. global_queries=False leaves out the last
    rule (the global tokens are then keys only, L is at most 2 window + 1 + len(global_idx)),
    for a caller that attends from the global queries densely instead."""
    _check_length(T)
    if not (isinstance(window, int) and window >= 0):
        raise ValueError(f"window must be a non-negative integer, got {window!r}")
    global_idx = torch.as_tensor(global_idx, dtype=torch.long, device=device).flatten()
    if global_idx.numel() and (global_idx.min() < 0 or global_idx.max() >= T):
        raise ValueError(f"global_idx must hold positions in [0, {T}), got {global_idx.tolist()}")
    i = torch.arange(T, device=device)[:, None]
    candidates = [i + torch.arange(-window, window + 1, device=device), global_idx.expand(T, -1)]
    if global_idx.numel() and global_queries:
        is_global = torch.zeros(T, dtype=torch.bool, device=device)
        is_global[global_idx] = True
        everything = torch.arange(T, device=device).expand(T, -1)
        candidates.append(torch.where(is_global[:, None], everything, -1))
    return _rows(torch.cat(candidates, dim=1), T, causal)


def _rows(candidates: torch.Tensor, T: int, causal: bool) -> torch.Tensor:
    """(T, C) candidate keys, possibly out of range or repeated, as sorted unique key lists
    (1, 1, T, L) with -1 fill."""
    i = torch.arange(T, device=candidates.device)[:, None]
    valid = (candidates >= 0) & (candidates < T)
    if causal:
        valid &= candidates <= i
    keys = torch.where(valid, candidates, T).sort(dim=1).values
    repeated = torch.zeros_like(valid)
    repeated[:, 1:] = keys[:, 1:] == keys[:, :-1]
    keys = torch.where(repeated, T, keys).sort(dim=1).values  # -1 slots (T for now) to the end
    width = int((keys < T).sum(1).max()) if T else 0
    return torch.where(keys[:, :width] < T, keys[:, :width], -1).int()[None, None]


def _check_length(T: object) -> None:
    if not (isinstance(T, int) and T >= 0):
        raise ValueError(f"T must be a non-negative integer, got {T!r}")


def _check_positive(name: str, value: object) -> None:
    if not (isinstance(value, int) and value >= 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
