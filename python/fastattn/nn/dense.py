"""Dense softmax attention: `full` (standard QK) and `shared_qk` (Reformer's Baseline (Q)),
and the masked softmax the other dense-weight kinds share."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastattn.nn._shared_qk import exclude_self, keys_from_queries


def masked_softmax(logits: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last axis restricted to the `allowed` entries (bool, broadcastable;
    None = all), computed in float32 (float64 for float64) and returned in logits' dtype.
    A row with no allowed entry gives zeros, not NaN."""
    accumulate = torch.float64 if logits.dtype == torch.float64 else torch.float32
    if allowed is None:
        return torch.softmax(logits, -1, dtype=accumulate).to(logits.dtype)
    has_key = allowed.any(-1, keepdim=True)
    logits = logits.masked_fill(~(allowed | ~has_key), float("-inf"))
    return (torch.softmax(logits, -1, dtype=accumulate) * has_key).to(logits.dtype)


def softmax_attention(logits, v, allowed, *, dropout_p: float, need_weights: bool):
    """(masked_softmax(logits) with dropout) @ v, and the probabilities (before dropout)
    when `need_weights`. logits (B or 1, H or 1, T, T), v (B, H, T, D)."""
    probs = masked_softmax(logits, allowed)
    return F.dropout(probs, dropout_p) @ v, (probs if need_weights else None)


def attend(q, k, v, allowed, *, dropout_p: float, need_weights: bool):
    """softmax(q k^T / sqrt(D) over the allowed keys) v through scaled_dot_product_attention;
    the explicit (B, H, T, T) product only when the weights are asked for."""
    if need_weights:
        logits = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
        return softmax_attention(logits, v, allowed, dropout_p=dropout_p, need_weights=True)
    if allowed is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p), None
    # A row with no allowed key would be all -inf (NaN on some backends): open it, then zero it.
    has_key = allowed.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | ~has_key, dropout_p=dropout_p)
    return out * has_key, None


def non_padded(key_padding_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, 1, 1, T) bool, True for the keys to attend to; None when nothing is padded."""
    return None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]


class FullAttention(nn.Module):
    """Baseline (QK): softmax(q k^T / sqrt(D)) v over the non-padded keys. No options."""

    projected = "qkv"
    drops_probabilities = True

    def __init__(self, num_heads: int, head_dim: int, max_len: int | None):
        super().__init__()

    def forward(self, q, k, v, key_padding_mask, need_weights, dropout_p):
        return attend(q, k, v, non_padded(key_padding_mask), dropout_p=dropout_p, need_weights=need_weights)


class SharedQKAttention(nn.Module):
    """Baseline (Q): dense attention with Reformer's shared-QK keys (the unit-length
    queries), a token attending to itself only when no other key is valid. No options."""

    projected = "qv"
    drops_probabilities = True

    def __init__(self, num_heads: int, head_dim: int, max_len: int | None):
        super().__init__()

    def forward(self, q, k, v, key_padding_mask, need_weights, dropout_p):
        length = q.shape[2]
        valid = non_padded(key_padding_mask)
        if valid is None:
            valid = torch.ones(1, 1, 1, length, dtype=torch.bool, device=q.device)
        is_self = torch.eye(length, dtype=torch.bool, device=q.device)
        allowed = exclude_self(valid, is_self)
        return attend(q, keys_from_queries(q), v, allowed, dropout_p=dropout_p, need_weights=need_weights)
