"""Reformer's shared-QK attention (Kitaev et al. 2020, section 3): the keys are the
queries scaled to unit length, so one projection serves both. A query's own key then
scores highest (q . q / ||q|| = ||q||), so a token attends to itself only when no other
key is valid."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def keys_from_queries(q: torch.Tensor) -> torch.Tensor:
    """The shared-QK keys of (B, H, T, D) queries: each query divided by its L2 norm (a
    zero query gives a zero key)."""
    return F.normalize(q, dim=-1)


def exclude_self(valid: torch.Tensor, is_self: torch.Tensor) -> torch.Tensor:
    """`valid` without the slots that name the query itself, except in a row where the
    query's own key is the only valid one. Both are bool, broadcastable to each other,
    with the key slots along the last axis."""
    has_others = (valid & ~is_self).any(-1, keepdim=True)
    return valid & ~(is_self & has_others)
