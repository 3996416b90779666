"""Pure-PyTorch references of the fastattn ops.

Each function computes an op's exact contract (docs in ../shared SPEC, restated in each
docstring) with plain tensor operations, in the dtype of its inputs: pass float64 for
a ground truth, float32 for a baseline to benchmark against. Tests compare every kernel
with these; users may use them anywhere the kernels are not available.
"""

from __future__ import annotations

import torch

__all__ = ["fixed_attention", "sparse_attention", "mips_transform", "alsh_hash", "topk_keys", "favor_attention"]


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


def sparse_attention(q, k, v, indices, *, scale=None):
    """SPEC section 4 by gathering each query's keys: (B, H, Tq, L, D) in memory."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    B, H, Tq, _ = q.shape
    index = indices.long().expand(B, H, Tq, -1)
    valid = index >= 0
    safe = index.clamp_min(0)

    def gather(x):  # (B, H, Tk, D) -> (B, H, Tq, L, D)
        return x.gather(2, safe.flatten(2)[..., None].expand(-1, -1, -1, x.shape[-1])).unflatten(2, index.shape[2:])

    scores = scale * (q[:, :, :, None, :] * gather(k)).sum(-1)
    scores = scores.masked_fill(~valid, float("-inf"))
    has_key = valid.any(-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(~has_key, 0.0), dim=-1) * has_key
    return (probs[..., None] * gather(v)).sum(-2)


def _max_norm(x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    """Largest ||x_t|| per (batch, head) over non-padded t, shaped (B, H, 1, 1); 0 if none."""
    norms = x.norm(dim=-1)
    if key_padding_mask is not None:
        norms = norms.masked_fill(key_padding_mask[:, None, :], 0)
    if norms.shape[-1] == 0:
        return norms.new_zeros(*norms.shape[:2], 1, 1)
    return norms.amax(dim=-1)[..., None, None]


def _safe_divide(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """x / n, with 0 where n is 0."""
    return torch.where(n > 0, x / n.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))


def mips_transform(x, scheme, role, *, key_padding_mask=None, keys=None, m=2, U=0.75):
    """SPEC section 1, one scheme per branch. x (B, H, T, D) -> (B, H, T, D + e)."""
    norm = x.norm(dim=-1, keepdim=True)
    zero = torch.zeros_like(norm)

    def sqrt0(value):
        return value.clamp_min(0).sqrt()

    if role == "query":
        if scheme in ("sign_alsh", "simple_lsh"):
            out = torch.cat([_safe_divide(x, norm)] + [zero] * (m if scheme == "sign_alsh" else 1), dim=-1)
        elif scheme == "xbox":
            out = torch.cat([x, zero], dim=-1)
        elif scheme == "xbox_qnf":
            M = _max_norm(keys, key_padding_mask)
            out = torch.cat([x * _safe_divide(M.expand_as(norm), norm), zero], dim=-1)
        elif scheme == "simple_alsh":
            y = _safe_divide(x, _max_norm(x, key_padding_mask).expand_as(x))
            out = torch.cat([y, zero, sqrt0(1 - y.square().sum(-1, keepdim=True))], dim=-1)
        else:
            raise ValueError(f"unknown scheme {scheme!r}")
    else:
        M = _max_norm(x, key_padding_mask)
        if scheme == "sign_alsh":
            y = _safe_divide(U * x, M.expand_as(x))
            sq = y.square().sum(-1, keepdim=True)
            out = torch.cat([y] + [0.5 - sq ** (2**r) for r in range(m)], dim=-1)
        elif scheme in ("xbox", "xbox_qnf"):
            out = torch.cat([x, sqrt0(M.square() - norm.square())], dim=-1)
        elif scheme in ("simple_lsh", "simple_alsh"):
            y = _safe_divide(x, M.expand_as(x))
            tail = [sqrt0(1 - y.square().sum(-1, keepdim=True))] + ([zero] if scheme == "simple_alsh" else [])
            out = torch.cat([y] + tail, dim=-1)
        else:
            raise ValueError(f"unknown scheme {scheme!r}")
    out = out.masked_fill(norm == 0, 0)  # a zero vector maps to zeros
    if key_padding_mask is not None:
        out = out.masked_fill(key_padding_mask[:, None, :, None], 0)
    return out


def alsh_hash(x, scheme, role, projections, *, key_padding_mask=None, keys=None, m=2, U=0.75):
    """SPEC section 2: signs of the projections of the transform, packed little-endian."""
    transformed = mips_transform(x, scheme, role, key_padding_mask=key_padding_mask, keys=keys, m=m, U=U)
    bits = (transformed @ projections.to(transformed.dtype).T > 0).long()  # (B, H, T, n_bits)
    n_bits = bits.shape[-1]
    words = -(-n_bits // 64)
    bits = torch.nn.functional.pad(bits, (0, 64 * words - n_bits)).unflatten(-1, (words, 64))
    # Distinct bits never carry, so the (wrapping) int64 sum is their OR.
    return (bits << torch.arange(64, device=bits.device)).sum(-1)


def _popcount(x: torch.Tensor) -> torch.Tensor:
    """Set bits of each int64 element (the classic SWAR count, on wrapping int64)."""
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return ((x * 0x0101010101010101) >> 56) & 0xFF


def _bit_mask(words: int, n_bits: int, device) -> torch.Tensor:
    """int64 mask per word of the first n_bits bits."""
    masks = []
    for w in range(words):
        bits = min(max(n_bits - 64 * w, 0), 64)
        masks.append(-1 if bits == 64 else (1 << bits) - 1)
    return torch.tensor(masks, dtype=torch.int64, device=device)


def topk_keys(q_codes, k_codes, L, *, key_padding_mask=None, mode="hamming", q=None, k=None, n_bits=None):
    """SPEC section 3 from a dense (B, H, Tq, Tk) score matrix.

    hamming: one torch.topk over a composite integer key that puts the tie-break inside
    the score; bucket: two stable sorts (the float scores leave no room for a composite).
    """
    words = q_codes.shape[-1]
    n_bits = 64 * words if n_bits is None else n_bits
    differ = (q_codes[:, :, :, None, :] ^ k_codes[:, :, None, :, :]) & _bit_mask(words, n_bits, q_codes.device)
    equal_bits = n_bits - _popcount(differ).sum(-1)  # (B, H, Tq, Tk)
    valid = equal_bits >= 0 if mode == "hamming" else equal_bits == n_bits
    if key_padding_mask is not None:
        valid = valid & ~key_padding_mask[:, None, None, :]
    Tq, Tk = equal_bits.shape[-2:]
    i = torch.arange(Tq, device=equal_bits.device)[:, None]
    j = torch.arange(Tk, device=equal_bits.device)[None, :]
    tie_rank = 2 * (i - j).abs() + (j > i).long()  # distance order: i, i-1, i+1, i-2, ...
    if mode == "hamming":
        lowest = torch.iinfo(torch.int64).min
        composite = (equal_bits * (2 * max(Tq, Tk) + 2) - tie_rank).masked_fill(~valid, lowest)
        values, order = composite.topk(min(L, Tk), dim=-1)
        chosen = torch.where(values > lowest, order, -1)
    else:
        score = (q.double() @ k.double().transpose(-1, -2)).masked_fill(~valid, float("-inf"))
        by_tie = torch.argsort(tie_rank, dim=-1, stable=True).expand_as(score)
        by_score = torch.argsort(score.gather(-1, by_tie), dim=-1, descending=True, stable=True)
        order = by_tie.gather(-1, by_score)
        chosen = torch.where(valid.gather(-1, order), order, -1)[..., :L]
    return torch.nn.functional.pad(chosen, (0, L - chosen.shape[-1]), value=-1).int()


def favor_attention(q, k, v, features, key_padding_mask=None):
    """Performer's FAVOR+ (bidirectional) in its T x T form, for the module
    `fastattn.nn.SelfAttention(kind="performer")`: with phi(x) = exp(W x' - ||x'||^2 / 2)
    / sqrt(m), x' = x / D^(1/4) and W = features (m, D), A_ij = phi(q_i) . phi(k_j) and
    out_i = sum_j A_ij v_j / sum_j A_ij over the non-padded j. A row with no key gives
    zeros. No overflow guard: for tests on small values."""

    def phi(x):
        x = x * x.shape[-1] ** -0.25
        return torch.exp(x @ features.T - x.square().sum(-1, keepdim=True) / 2) / features.shape[0] ** 0.5

    scores = phi(q) @ phi(k).transpose(-1, -2)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], 0)
    total = scores.sum(-1, keepdim=True)
    return torch.where(total > 0, scores / total, 0) @ v
