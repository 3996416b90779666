"""Pure-PyTorch references of the fastattn ops.

Each function computes an op's exact contract (docs in ../shared SPEC, restated in each
docstring) with plain tensor operations, in the dtype of its inputs: pass float64 for
a ground truth, float32 for a baseline to benchmark against. Tests compare every kernel
with these; users may use them anywhere the kernels are not available.
"""

from __future__ import annotations

import torch

__all__ = ["fixed_attention"]


def fixed_attention(
    logits: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """out[b, h, i] = sum_j softmax_j(logits[h, i, j] over non-padded j of batch b) v[b, h, j].

    logits (H, T, T), v (B, H, T, D), key_padding_mask (B, T) bool with True = padding.
    A row with no key to attend to gives zeros.
    """
    scores = logits.unsqueeze(0)  # (1, H, T, T)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    has_key = ~torch.isneginf(scores).all(dim=-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(~has_key, 0.0), dim=-1) * has_key
    return probs @ v
