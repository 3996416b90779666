"""The paper's LSH rows: asymmetric MIPS hashing (`ops.alsh_hash`), the L best keys per
query (`ops.topk_keys`), then `ops.sparse_attention` over them."""

from __future__ import annotations

import torch
import torch.nn as nn

from fastattn import ops
from fastattn.nn._shared_qk import keys_from_queries
from fastattn.nn.sparse import attend_slots

# Default code length per selection mode: "hamming" ranks all keys by equal bits, so more
# bits rank more finely; "bucket" keeps only exact code matches, so 4 bits (16 buckets)
# leave about T / 16 candidates, enough to fill L = 64 at the paper's T = 500 to 1000.
_DEFAULT_BITS = {"hamming": 32, "bucket": 4}


class LSHAttention(nn.Module):
    """Keys chosen by sign-random-projection codes of a MIPS transform (SPEC sections 1-3).

    Options:
        L: keys per query (default 64); under shared-QK the query's own slot is dropped
            (unless it is the only valid key), so a row attends to at most L keys. With
            L >= T every key is chosen and the kind equals `shared_qk` (or `full`).
        n_bits: random projections, 1 to 256 (default 32 for "hamming", 4 for "bucket").
        mode: "hamming" (default: the L keys whose codes agree on the most bits, always L
            of them) or "bucket" (the paper's rule: keys with the query's exact code,
            ranked by q . k; fewer than L is normal).
        shared_qk: Reformer's shared-QK keys, the paper's setting (default True).
        m, U: sign_alsh only: appended norm powers and shrink factor (default 2 and 0.75,
            the paper's and Shrivastava and Li's best).

    The projections are redrawn from N(0, 1) at every training forward (as Reformer
    redraws its rotations) and fixed in eval: the `projections` buffer, saved with the
    state dict.
    """

    drops_probabilities = False

    def __init__(self, num_heads: int, head_dim: int, max_len: int | None, *, scheme: str, L: int = 64,
                 n_bits: int | None = None, mode: str = "hamming", shared_qk: bool = True,
                 m: int | None = None, U: float | None = None):
        super().__init__()
        if scheme not in ops.SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(ops.SCHEMES)}, got {scheme!r}")
        if mode not in _DEFAULT_BITS:
            raise ValueError(f"mode must be 'hamming' or 'bucket', got {mode!r}")
        n_bits = _DEFAULT_BITS[mode] if n_bits is None else n_bits
        if not (isinstance(n_bits, int) and 1 <= n_bits <= 256):
            raise ValueError(f"n_bits must be an integer from 1 to 256, got {n_bits!r}")
        if not (isinstance(L, int) and not isinstance(L, bool) and L >= 1):
            raise ValueError(f"L must be a positive integer, got {L!r}")
        if not isinstance(shared_qk, bool):
            raise TypeError(f"shared_qk must be True or False, got {shared_qk!r}")
        if scheme != "sign_alsh" and (m is not None or U is not None):
            raise ValueError(f"m and U are options of sign_alsh only, not of {scheme}")
        m, U = (2 if m is None else m), (0.75 if U is None else U)
        if not (isinstance(m, int) and 1 <= m <= 8):
            raise ValueError(f"m must be an integer from 1 to 8, got {m!r}")
        if not (isinstance(U, (int, float)) and 0 < U < 1):
            raise ValueError(f"U must be a number in (0, 1), got {U!r}")
        self.scheme, self.L, self.n_bits, self.mode, self.m, self.U = scheme, L, n_bits, mode, m, float(U)
        self.shared_qk = shared_qk
        self.projected = "qv" if shared_qk else "qkv"
        self.register_buffer("projections", torch.randn(n_bits, head_dim + ops.extra_dims(scheme, m)))

    def forward(self, q, k, v, key_padding_mask, need_weights):
        # The heads come as strided views of one projection; each op below would copy them
        # again (and normalize keeps the strides), so they are made contiguous here once.
        q, v = q.contiguous(), v.contiguous()
        k = keys_from_queries(q) if self.shared_qk else k.contiguous()
        projections = torch.randn_like(self.projections) if self.training else self.projections
        hashing = {"key_padding_mask": key_padding_mask, "m": self.m, "U": self.U}
        q_codes = ops.alsh_hash(q, self.scheme, "query", projections, keys=k, **hashing)
        k_codes = ops.alsh_hash(k, self.scheme, "key", projections, **hashing)
        indices = ops.topk_keys(q_codes, k_codes, self.L, key_padding_mask=key_padding_mask, mode=self.mode,
                                q=q, k=k, n_bits=self.n_bits)
        # topk_keys never picks a padded key: no padding left to drop.
        return attend_slots(q, k, v, indices, key_padding_mask=None, shared_qk=self.shared_qk,
                            need_weights=need_weights, owned=True)
