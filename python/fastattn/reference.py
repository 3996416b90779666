"""Pure-PyTorch references of the fastattn ops.

Each function computes an op's exact contract (docs in ../shared SPEC, restated in each
docstring) with plain tensor operations, in the dtype of its inputs: pass float64 for
a ground truth, float32 for a baseline to benchmark against. Tests compare every kernel
with these; users may use them anywhere the kernels are not available.
"""

from __future__ import annotations

import torch

__all__ = [
    "fixed_attention", "sparse_attention", "mips_transform", "alsh_hash", "topk_keys", "drop_own_key",
    "favor_attention",
]


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


def _max_square_norm(sq_norm: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    """Largest ||x_t||^2 per (batch, head) over non-padded t, from the (B, H, T, 1) squared
    norms themselves, shaped (B, H, 1, 1); 0 if none. Taking the maximum of the very values
    the rows use makes the largest row's M^2 - ||x||^2 exactly 0, where a norm from another
    reduction would leave sqrt(rounding)."""
    if key_padding_mask is not None:
        sq_norm = sq_norm.masked_fill(key_padding_mask[:, None, :, None], 0)
    if sq_norm.shape[2] == 0:
        return sq_norm.new_zeros(*sq_norm.shape[:2], 1, 1)
    return sq_norm.amax(dim=2, keepdim=True)


def _safe_divide(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """x / n, with 0 where n is 0."""
    return torch.where(n > 0, x / n.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))


def mips_transform(x, scheme, role, *, key_padding_mask=None, keys=None, m=2, U=0.75):
    """SPEC section 1, one scheme per branch. x (B, H, T, D) -> (B, H, T, D + e)."""
    sq_norm = x.square().sum(-1, keepdim=True)
    norm = sq_norm.sqrt()
    zero = torch.zeros_like(norm)

    def sqrt0(value):
        return value.clamp_min(0).sqrt()

    def sqrt_one_minus(sq, max_sq):  # sqrt(1 - ||y||^2) for y = x / sqrt(max_sq); y = 0 when max_sq = 0
        return sqrt0(1 - _safe_divide(sq, max_sq.expand_as(sq)))

    if role == "query":
        if scheme in ("sign_alsh", "simple_lsh"):
            out = torch.cat([_safe_divide(x, norm)] + [zero] * (m if scheme == "sign_alsh" else 1), dim=-1)
        elif scheme == "xbox":
            out = torch.cat([x, zero], dim=-1)
        elif scheme == "xbox_qnf":
            M = _max_square_norm(keys.square().sum(-1, keepdim=True), key_padding_mask).sqrt()
            out = torch.cat([x * _safe_divide(M.expand_as(norm), norm), zero], dim=-1)
        elif scheme == "simple_alsh":
            max_sq = _max_square_norm(sq_norm, key_padding_mask)
            y = _safe_divide(x, max_sq.sqrt().expand_as(x))
            out = torch.cat([y, zero, sqrt_one_minus(sq_norm, max_sq)], dim=-1)
        else:
            raise ValueError(f"unknown scheme {scheme!r}")
    else:
        max_sq = _max_square_norm(sq_norm, key_padding_mask)
        if scheme == "sign_alsh":
            y = _safe_divide(U * x, max_sq.sqrt().expand_as(x))
            sq = U**2 * _safe_divide(sq_norm, max_sq.expand_as(sq_norm))
            out = torch.cat([y] + [0.5 - sq ** (2**r) for r in range(m)], dim=-1)
        elif scheme in ("xbox", "xbox_qnf"):
            out = torch.cat([x, sqrt0(max_sq - sq_norm)], dim=-1)
        elif scheme in ("simple_lsh", "simple_alsh"):
            y = _safe_divide(x, max_sq.sqrt().expand_as(x))
            tail = [sqrt_one_minus(sq_norm, max_sq)] + ([zero] if scheme == "simple_alsh" else [])
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
    the score; bucket: stable sorts (the float scores leave no room for a composite). A NaN
    dot product ranks after every number.
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
        # The sorts put NaN first; it ranks after every number, and non-candidates after it.
        group = torch.where(valid, score.isnan().long(), 2)
        order = order.gather(-1, torch.argsort(group.gather(-1, order), dim=-1, stable=True))
        chosen = torch.where(valid.gather(-1, order), order, -1)[..., :L]
    return torch.nn.functional.pad(chosen, (0, L - chosen.shape[-1]), value=-1).int()


def drop_own_key(indices):
    """fastattn.ops.drop_own_key_, out of place: row i of the (B, H, T, L) lists without
    the slots naming key i, where another slot names a key (a value >= 0)."""
    own = indices == torch.arange(indices.shape[2], device=indices.device)[:, None]
    lists_another = ((indices >= 0) & ~own).any(-1, keepdim=True)
    return indices.masked_fill(own & lists_another, -1)


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
