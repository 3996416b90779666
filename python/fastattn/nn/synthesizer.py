"""SYNTHESIZER (Tay et al. 2020) rows of the paper: attention weights that are not
query-key products. Dense: logits W2 relu(W1 x) + b2 from each token alone (W1 x + b1 is
the module's query projection); Random: a learned (H, max_len, max_len) logit table
through `ops.fixed_attention`. Both crop their max_len-wide weights to T."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from fastattn import ops
from fastattn.nn.dense import masked_softmax, non_padded, softmax_attention


class DenseSynthesizer(nn.Module):
    """SYN. (Dense), `per_head=False`: one (B, T, max_len) logit map from the whole hidden
    vector, shared by the heads; SYN. (Dense+M), `per_head=True`: one map per head, from that
    head's slice. No options beyond max_len (required)."""

    projected = "qv"
    drops_probabilities = True
    needs_max_len = True

    def __init__(self, num_heads: int, head_dim: int, max_len: int, *, per_head: bool):
        super().__init__()
        self.per_head = per_head
        maps, fan_in = (num_heads, head_dim) if per_head else (1, num_heads * head_dim)
        # nn.Linear's initialisation, one (fan_in -> max_len) layer per map.
        bound = 1 / math.sqrt(fan_in)
        self.weight = nn.Parameter(torch.empty(maps, fan_in, max_len).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(maps, 1, max_len).uniform_(-bound, bound))

    def forward(self, q, k, v, key_padding_mask, need_weights, dropout_p):
        length = q.shape[2]
        hidden = q if self.per_head else q.transpose(1, 2).flatten(2)[:, None]  # (B, H or 1, T, fan_in)
        logits = torch.relu(hidden) @ self.weight[..., :length] + self.bias[..., :length]
        return softmax_attention(logits, v, non_padded(key_padding_mask), dropout_p=dropout_p,
                                 need_weights=need_weights)


class RandomSynthesizer(nn.Module):
    """SYN. (Random): input-independent logits R (H, max_len, max_len), initialised from
    N(0, 1); softmax(R[:, :T, :T]) v over the non-padded keys.

    Options:
        trainable: learn R (default True); False keeps the random weights fixed, the
            Synthesizer paper's "fixed random" variant.
    """

    projected = "v"
    drops_probabilities = False
    needs_max_len = True

    def __init__(self, num_heads: int, head_dim: int, max_len: int, *, trainable: bool = True):
        super().__init__()
        if not isinstance(trainable, bool):
            raise TypeError(f"trainable must be True or False, got {trainable!r}")
        self.logits = nn.Parameter(torch.randn(num_heads, max_len, max_len), requires_grad=trainable)

    def forward(self, q, k, v, key_padding_mask, need_weights):
        length = v.shape[2]
        logits = self.logits[:, :length, :length]
        out = ops.fixed_attention(logits, v, key_padding_mask=key_padding_mask)
        return out, (masked_softmax(logits, non_padded(key_padding_mask)) if need_weights else None)


def input_independent_logits(module: nn.Module) -> list[nn.Parameter]:
    """The trainable input-independent attention logits in `module` (R of synth_random and
    fixed_pattern): parameters an optimiser should treat apart, since a weight decay pulls
    a learned pattern back to uniform attention and a learning rate sized for projections
    barely moves logits that start at a peak of 8."""
    return [m.logits for m in module.modules() if isinstance(m, RandomSynthesizer) and m.logits.requires_grad]

