"""LSH key selection (SPEC sections 1 to 3): asymmetric MIPS transforms, sign-random-
projection codes, and exact top-k keys. None of them is differentiable; inputs are
detached."""

from __future__ import annotations

import math

import torch

from fastattn.ops import _checks

__all__ = ["SCHEMES", "mips_transform", "alsh_hash", "topk_keys", "extra_dims"]

# Appended coordinates e of each scheme (sign_alsh: m).
SCHEMES = ("sign_alsh", "xbox", "xbox_qnf", "simple_lsh", "simple_alsh")
MAX_BITS = 256
_MAX_M = 8
# Limits of the CUDA kernels: alsh_hash keeps a row of x in 48 KiB of shared memory per
# four rows (D <= 3072); bucket mode merges candidates in a buffer of 256 per query.
MAX_HASH_DIM_CUDA = 48 * 1024 // (4 * 4)
MAX_BUCKET_L_CUDA = 256


def extra_dims(scheme: str, m: int = 2) -> int:
    """How many coordinates `scheme` appends to a D-dimensional vector."""
    return {"sign_alsh": m, "simple_alsh": 2}.get(scheme, 1)


def mips_transform(x, scheme, role, *, key_padding_mask=None, keys=None, m=2, U=0.75):
    """Map queries or keys so that the angle between Q(q) and P(k) orders keys by q . k.

    Args:
        x: (B, H, T, D) queries (``role="query"``) or keys (``role="key"``).
        scheme: one of ``fastattn.ops.SCHEMES``: ``sign_alsh`` (Shrivastava and Li 2014),
            ``xbox`` (Bachrach et al. 2014), ``xbox_qnf`` (Huang et al. 2018),
            ``simple_lsh`` and ``simple_alsh`` (Neyshabur and Srebro 2015).
        key_padding_mask: optional (B, T) bool, True = padding: padded positions map to
            zeros and take no part in the norm maxima.
        keys: the keys of the same batch and heads, shaped like x; required for
            ``xbox_qnf`` queries (whose scale is M / ||q||), ignored otherwise.
        m, U: ``sign_alsh``'s number of appended norms and shrink factor (best: 2, 0.75).

    Returns:
        (B, H, T, D + e), see SPEC section 1. M, the largest key norm, and Mq, the largest
        query norm, are taken per (batch, head) over non-padded positions. Under sign
        random projections ``xbox`` and ``xbox_qnf`` give identical codes: a positive scale
        of the query does not change the signs.
    """
    _check_transform(x, scheme, role, key_padding_mask, keys, m, U)
    return torch.ops.fastattn.mips_transform(x.detach(), scheme, role, key_padding_mask, _detach(keys), m, float(U))


def alsh_hash(x, scheme, role, projections, *, key_padding_mask=None, keys=None, m=2, U=0.75):
    """Sign-random-projection codes of ``mips_transform(x, ...)``, fused.

    Bit i is ``(transformed @ projections.T)[..., i] > 0`` (a projection of exactly 0 is
    bit 0), packed little-endian into int64 words: bit i is bit i % 64 of word i // 64.

    Args:
        projections: (n_bits, D + e) float, 1 <= n_bits <= 256 (Gaussian in practice).
        the rest: as ``mips_transform``.

    Returns:
        int64 (B, H, T, ceil(n_bits / 64)); padded positions get code 0. A bit whose
        projection lies within rounding of 0 is not determined by the math: the CPU (a
        matrix product of the transformed rows) and CUDA (the projection of x, scaled after)
        may set it differently. The tests allow that within 1e-4 times the largest
        |projection| of the row set in float32.
    """
    _check_transform(x, scheme, role, key_padding_mask, keys, m, U)
    width = x.shape[-1] + extra_dims(scheme, m)
    _checks.tensor("projections", projections, 2, f"(n_bits, D + e) = (n_bits, {width})")
    if not 1 <= projections.shape[0] <= MAX_BITS:
        raise ValueError(f"projections must have 1 to {MAX_BITS} rows (n_bits), got {projections.shape[0]}")
    _checks.size("projections", projections, 1, width, f"D + e for {scheme} with D = {x.shape[-1]}")
    _checks.same_device("projections", projections, "x", x)
    if not projections.is_floating_point():
        raise TypeError(f"projections must be a float tensor, got {projections.dtype}")
    if x.device.type == "cuda" and x.shape[-1] > MAX_HASH_DIM_CUDA:
        raise ValueError(f"x may have at most D = {MAX_HASH_DIM_CUDA} on CUDA (alsh_hash), got {x.shape[-1]}")
    return torch.ops.fastattn.alsh_hash(
        x.detach(), scheme, role, projections.detach(), key_padding_mask, _detach(keys), m, float(U)
    )


def topk_keys(q_codes, k_codes, L, *, key_padding_mask=None, mode="hamming", q=None, k=None, n_bits=None):
    """For each query, the indices of its L best keys, best first (SPEC section 3).

    Args:
        q_codes: int64 (B, H, Tq, W) codes of the queries (from ``alsh_hash``).
        k_codes: int64 (B, H, Tk, W) codes of the keys.
        L: keys per query (0 or more); slots beyond the candidates hold -1.
        key_padding_mask: optional (B, Tk) bool, True = padding: never chosen.
        mode: ``"hamming"`` ranks every key by the number of equal bits among the first
            n_bits (exact top-L); ``"bucket"`` (the paper's rule) takes only keys whose code
            equals the query's on all n_bits bits, ranked by q . k.
        q, k: (B, H, Tq, D) and (B, H, Tk, D), required for ``"bucket"``.
        n_bits: bits of the codes that count (default: all 64 W).

    Returns:
        int32 (B, H, Tq, L). Ties go to the smaller |i - j|, then the smaller j, so the
        result is unique. In bucket mode q . k is summed in order of the head dimension with
        every product rounded (no fused multiply-add), on the CPU and CUDA alike, so both
        rank near-ties the same; a NaN q . k ranks after every number.
    """
    _check_topk(q_codes, k_codes, L, key_padding_mask, mode, q, k, n_bits)
    return torch.ops.fastattn.topk_keys(
        q_codes, k_codes, L, key_padding_mask, mode, _detach(q), _detach(k), n_bits
    )


def _detach(tensor):
    return None if tensor is None else tensor.detach()


def _check_transform(x, scheme, role, key_padding_mask, keys, m, U):
    _checks.tensor("x", x, 4, "(B, H, T, D)")
    _checks.float_dtype("x", x)
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}; got {scheme!r}")
    if role not in ("query", "key"):
        raise ValueError(f"role must be 'query' or 'key', got {role!r}")
    if scheme == "sign_alsh" and not (isinstance(m, int) and 1 <= m <= _MAX_M):
        raise ValueError(f"m must be an integer from 1 to {_MAX_M} for sign_alsh, got {m!r}")
    if not (isinstance(U, (int, float)) and 0 < U < 1):
        raise ValueError(f"U must be a number in (0, 1), got {U!r}")
    _checks.key_padding_mask(key_padding_mask, x.shape[0], x.shape[2], x)
    if scheme == "xbox_qnf" and role == "query":
        if keys is None:
            raise ValueError("keys is required for xbox_qnf queries (their scale is M / ||q||)")
        _checks.tensor("keys", keys, 4, "(B, H, T, D)")
        if keys.shape != x.shape:
            raise ValueError(f"keys must be shaped like x {tuple(x.shape)}, got {tuple(keys.shape)}")
        _checks.same_device("keys", keys, "x", x)
        _checks.same_dtype("keys", keys, "x", x)


def _check_topk(q_codes, k_codes, L, key_padding_mask, mode, q, k, n_bits):
    _checks.tensor("q_codes", q_codes, 4, "(B, H, Tq, W)")
    _checks.tensor("k_codes", k_codes, 4, "(B, H, Tk, W)")
    for name, codes in (("q_codes", q_codes), ("k_codes", k_codes)):
        if codes.dtype != torch.int64:
            raise TypeError(f"{name} must be int64 codes from alsh_hash, got {codes.dtype}")
    for dim, meaning in ((0, "B"), (1, "H"), (3, "W, the words of a code")):
        _checks.size("k_codes", k_codes, dim, q_codes.shape[dim], f"{meaning} of q_codes")
    _checks.same_device("k_codes", k_codes, "q_codes", q_codes)
    if q_codes.shape[3] > MAX_BITS // 64:
        raise ValueError(f"q_codes may have at most {MAX_BITS // 64} words (256 bits), got {q_codes.shape[3]}")
    if not isinstance(L, int) or isinstance(L, bool) or L < 0:
        raise ValueError(f"L must be a non-negative integer, got {L!r}")
    if mode not in ("hamming", "bucket"):
        raise ValueError(f"mode must be 'hamming' or 'bucket', got {mode!r}")
    words = q_codes.shape[3]
    if n_bits is not None and not (isinstance(n_bits, int) and 1 <= n_bits <= 64 * words):
        raise ValueError(f"n_bits must be an integer from 1 to 64 W = {64 * words}, got {n_bits!r}")
    _checks.key_padding_mask(key_padding_mask, k_codes.shape[0], k_codes.shape[2], k_codes)
    if mode == "bucket":
        if q is None or k is None:
            raise ValueError("mode='bucket' ranks candidates by q . k: pass q and k")
        _checks.tensor("q", q, 4, "(B, H, Tq, D)")
        _checks.tensor("k", k, 4, "(B, H, Tk, D)")
        if q.shape[:3] != q_codes.shape[:3] or k.shape[:3] != k_codes.shape[:3] or q.shape[3] != k.shape[3]:
            raise ValueError(
                f"q and k must match the codes' (B, H, T) and share D, got q {tuple(q.shape)}, "
                f"k {tuple(k.shape)} for codes {tuple(q_codes.shape)}, {tuple(k_codes.shape)}"
            )
        _checks.float_dtype("q", q)
        _checks.same_dtype("k", k, "q", q)
        _checks.same_device("q", q, "q_codes", q_codes)
        _checks.same_device("k", k, "q_codes", q_codes)
        if q_codes.device.type == "cuda" and L > MAX_BUCKET_L_CUDA:
            raise ValueError(f"L may be at most {MAX_BUCKET_L_CUDA} on CUDA in bucket mode, got {L}")


@torch.library.register_fake("fastattn::mips_transform")
def _mips_transform_fake(x, scheme, role, key_padding_mask, keys, m, U):
    _check_transform(x, scheme, role, key_padding_mask, keys, m, U)
    return x.new_empty((*x.shape[:3], x.shape[3] + extra_dims(scheme, m)))


@torch.library.register_fake("fastattn::alsh_hash")
def _alsh_hash_fake(x, scheme, role, projections, key_padding_mask, keys, m, U):
    _check_transform(x, scheme, role, key_padding_mask, keys, m, U)
    return x.new_empty((*x.shape[:3], math.ceil(projections.shape[0] / 64)), dtype=torch.int64)


@torch.library.register_fake("fastattn::topk_keys")
def _topk_keys_fake(q_codes, k_codes, L, key_padding_mask, mode, q, k, n_bits):
    _check_topk(q_codes, k_codes, L, key_padding_mask, mode, q, k, n_bits)
    return q_codes.new_empty((*q_codes.shape[:3], L), dtype=torch.int32)
