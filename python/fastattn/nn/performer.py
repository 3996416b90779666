"""Performer (Choromanski et al. 2021) FAVOR+: softmax attention approximated with
positive orthogonal random features, bidirectional. exp(q . k / sqrt(D)) ~ phi(q) . phi(k)
with phi(x) = exp(W x' - ||x'||^2 / 2) / sqrt(m), x' = x / D^(1/4), so attention costs
O(T m D) time and O(T m + m D) memory: no T x T matrix unless the weights are asked for.
No fastattn op computes this; it is plain PyTorch."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def orthogonal_features(num_features: int, head_dim: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """(m, D) random feature directions: blocks of D orthogonal rows (QR of a Gaussian
    matrix), each row scaled to the norm of an independent D-dimensional Gaussian vector so
    that every row is marginally N(0, I): the Performer paper's ORF (performer-pytorch's
    scaling=0)."""
    blocks = []
    for _ in range(-(-num_features // head_dim)):
        orthonormal, upper = torch.linalg.qr(torch.randn(head_dim, head_dim, dtype=torch.float64, device=device))
        # Householder QR fixes the signs of R's diagonal, which biases Q's directions; with
        # them made positive Q is uniform (Haar), so each row's direction is uniform.
        blocks.append((orthonormal * upper.diagonal().sign()).T)
    rows = torch.cat(blocks)[:num_features]
    norms = torch.randn(num_features, head_dim, dtype=torch.float64, device=device).norm(dim=1, keepdim=True)
    return (rows * norms).to(dtype)


def positive_features(x: torch.Tensor, features: torch.Tensor, valid: torch.Tensor | None, *,
                      per_row: bool) -> torch.Tensor:
    """phi(x) (B, H, T, m) up to a positive factor that cancels in the attention: per row
    for queries (`per_row`), per (batch, head) over the valid positions for keys, which get
    phi = 0 where `valid` (B, 1, T, 1) is False. The factor is exp(-max W x'), which keeps
    exp from overflowing."""
    x = x * x.shape[-1] ** -0.25
    projected = x @ features.T  # (B, H, T, m)
    exponent = projected - x.square().sum(-1, keepdim=True) / 2
    if per_row:
        return torch.exp(exponent - projected.amax(-1, keepdim=True).detach()) / math.sqrt(features.shape[0])
    if valid is not None:
        projected = projected.masked_fill(~valid, float("-inf"))
        exponent = exponent.masked_fill(~valid, float("-inf"))  # exp gives 0, with a 0 gradient
    # -inf when every key is padded: any finite value does then.
    stabiliser = projected.amax((-2, -1), keepdim=True).detach().nan_to_num(neginf=0.0)
    return torch.exp(exponent - stabiliser) / math.sqrt(features.shape[0])


class PerformerAttention(nn.Module):
    """FAVOR+ attention over the non-padded keys.

    Options:
        num_features: random features m (default max(1, round(D ln D)), performer-pytorch's
            default: 266 for D = 64).
        redraw_interval: training forwards between feature redraws (default 1000, as
            performer-pytorch); None never redraws. A redraw is a graph break under
            torch.compile, so compile with redraw_interval=None for fullgraph training.

    The features are the `features` buffer (saved with the state dict); eval uses them as
    they are.
    """

    projected = "qkv"
    drops_probabilities = False

    def __init__(self, num_heads: int, head_dim: int, max_len: int | None, *, num_features: int | None = None,
                 redraw_interval: int | None = 1000):
        super().__init__()
        num_features = max(1, round(head_dim * math.log(head_dim))) if num_features is None else num_features
        if not (isinstance(num_features, int) and num_features >= 1):
            raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
        if redraw_interval is not None and not (isinstance(redraw_interval, int) and redraw_interval >= 1):
            raise ValueError(f"redraw_interval must be a positive integer or None, got {redraw_interval!r}")
        self.redraw_interval = redraw_interval
        self.register_buffer("features", orthogonal_features(num_features, head_dim))
        self.register_buffer("forwards_since_redraw", torch.zeros((), dtype=torch.long))

    @torch.compiler.disable
    def redraw_when_due(self) -> None:
        """Count a training forward; redraw the features every `redraw_interval` of them."""
        self.forwards_since_redraw += 1
        if int(self.forwards_since_redraw) >= self.redraw_interval:
            self.features.copy_(orthogonal_features(*self.features.shape, device=self.features.device))
            self.forwards_since_redraw.zero_()

    def forward(self, q, k, v, key_padding_mask, need_weights):
        if self.training and self.redraw_interval is not None:
            self.redraw_when_due()
        valid = None if key_padding_mask is None else ~key_padding_mask[:, None, :, None]  # (B, 1, T, 1)
        phi_q = positive_features(q, self.features, None, per_row=True)
        phi_k = positive_features(k, self.features, valid, per_row=False)
        context = phi_k.transpose(-1, -2) @ v  # (B, H, m, D)
        normaliser = phi_q @ phi_k.sum(-2)[..., None]  # (B, H, T, 1)
        # Only a row with no valid key has a zero normaliser, and a zero numerator: it gets zeros.
        normaliser = torch.where(normaliser > 0, normaliser, 1)
        out = (phi_q @ context) / normaliser
        return out, ((phi_q @ phi_k.transpose(-1, -2)) / normaliser if need_weights else None)
