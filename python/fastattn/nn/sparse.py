"""Attention over per-query key lists through `fastattn.ops.sparse_attention`: the
structured patterns of `fastattn.masks` (`strided`, `fixed`, `local_global`), and the
slot handling the LSH kinds share (padding, shared-QK self exclusion, dense weights)."""

from __future__ import annotations

import functools

import torch
import torch.nn as nn

from fastattn import masks, ops
from fastattn.nn._shared_qk import exclude_self, keys_from_queries
from fastattn.nn.dense import masked_softmax


def attend_slots(q, k, v, indices, *, key_padding_mask, shared_qk: bool, need_weights: bool,
                 owned: bool = False):
    """sparse_attention over the keys `indices` (B or 1, H or 1, T, L) lists, after emptying
    the slots that name padded keys (sparse_attention has no mask) and, under shared-QK,
    the query's own slot unless it is the row's only valid one. `owned`: the caller's own
    fresh indices, which may be changed in place. Returns (out, dense (B, H, T, T) weights
    when `need_weights`, else None)."""
    if key_padding_mask is not None:
        indices = _drop_padded_keys(indices, key_padding_mask)  # (B, H or 1, T, L)
        owned = True
    if shared_qk:
        indices = _drop_self(indices, in_place=owned)
    out = ops.sparse_attention(q, k, v, indices)
    return out, (slot_weights(q, k, indices) if need_weights else None)


def _drop_padded_keys(indices, key_padding_mask) -> torch.Tensor:
    """(B or 1, H or 1, T, L) indices as (B, H or 1, T, L), each item's slots that name one
    of its padded keys emptied: one gather through the item's map from a key to itself or
    to -1 (with one more entry, for the empty slots), instead of gathering the mask and
    then filling, which cost half the attention for the fixed pattern at T = 3000."""
    batch, keys = key_padding_mask.shape
    itself = torch.arange(keys, device=indices.device, dtype=indices.dtype).expand(batch, keys)
    key_map = torch.cat([itself.masked_fill(key_padding_mask, -1), itself.new_full((batch, 1), -1)], dim=1)
    positions = torch.where(indices >= 0, indices, keys).flatten(1).long()
    return key_map.gather(1, positions.expand(batch, -1)).view(batch, *indices.shape[1:])


def _drop_self(indices, *, in_place: bool) -> torch.Tensor:
    """indices without the slot that names the query itself, unless it is the row's only
    listed key, by one pass of ops.drop_own_key_ (in torch, a comparison of every slot and
    a masked fill cost 2.6 ms of a 42 ms LSH layer at T = 500). `in_place` saves a copy of
    the lists: at T = 500 a fresh (B, H, T, L) tensor cost 4 ms of page faults."""
    if indices.shape[-1] < 2:  # one slot: no other key to prefer
        return indices
    return ops.drop_own_key_(indices if in_place else indices.clone(memory_format=torch.contiguous_format))


def slot_weights(q, k, indices) -> torch.Tensor:
    """The (B, H, T, T) probabilities sparse_attention gives each listed key (a key listed
    twice gets both shares), zeros elsewhere. Forms T x T scores: for analysis only."""
    batch, heads, length, _ = q.shape
    indices = indices.long().expand(batch, heads, length, -1)
    valid = indices >= 0
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    probs = masked_softmax(scores.gather(-1, indices.clamp_min(0)), valid)
    dense = scores.new_zeros(batch, heads, length, length + 1)  # column T collects the empty slots
    return dense.scatter_add_(-1, torch.where(valid, indices, length), probs)[..., :length]


class PatternAttention(nn.Module):
    """Attention over a fixed pattern of keys per query, `pattern(T, device=...)` giving
    (1, 1, T, L) indices. With a max_len the pattern is built once at max_len and cropped
    (every pattern here depends on i and j only, not on T), which keeps the forward free of
    data-dependent shapes, so torch.compile(fullgraph=True) works; without one it is built
    at the first call of each length and device and kept for the calls after it (building
    sorts (T, C) candidates: at T = 3000 a tenth of the attention's own time)."""

    drops_probabilities = False

    def __init__(self, max_len: int | None, shared_qk: bool, pattern):
        super().__init__()
        if not isinstance(shared_qk, bool):
            raise TypeError(f"shared_qk must be True or False, got {shared_qk!r}")
        self.shared_qk = shared_qk
        self.projected = "qv" if shared_qk else "qkv"
        self.pattern = pattern
        self.register_buffer("max_len_indices", None if max_len is None else pattern(max_len), persistent=False)
        self._last_built = None  # ((length, device), indices) of the last call without max_len

    def indices(self, length: int, device) -> torch.Tensor:
        if self.max_len_indices is None:
            key = (length, torch.device(device))
            if self._last_built is None or self._last_built[0] != key:
                self._last_built = (key, self.pattern(length, device=device))
            return self._last_built[1]
        cropped = self.max_len_indices[:, :, :length]
        return cropped.masked_fill(cropped >= length, -1)

    def forward(self, q, k, v, key_padding_mask, need_weights):
        if self.shared_qk:
            k = keys_from_queries(q)
        return attend_slots(q, k, v, self.indices(q.shape[2], q.device), key_padding_mask=key_padding_mask,
                            shared_qk=self.shared_qk, need_weights=need_weights)


def _check_positive(name: str, value: object) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class StridedAttention(PatternAttention):
    """Sparse (strided), Child et al. 2019, bidirectional: keys j with |i - j| < stride or
    (i - j) % stride == 0.

    Options:
        stride: window half-width and stripe period (default 32, about sqrt(T) for the
            ~1000-frame utterances of the paper, as the Sparse Transformer sets it).
        shared_qk: Reformer's shared-QK keys, the paper's setting (default True).
    """

    def __init__(self, num_heads: int, head_dim: int, max_len: int | None, *, stride: int = 32,
                 shared_qk: bool = True):
        _check_positive("stride", stride)
        super().__init__(max_len, shared_qk, functools.partial(masks.strided, stride=stride))


class FixedSparseAttention(PatternAttention):
    """Sparse (fixed), Child et al. 2019, bidirectional: keys j in the query's block of
    `stride` (j // stride == i // stride) or in the last `summary` positions of any block.

    Options:
        stride: block length (default 32).
        summary: summary positions per block, 1 to stride (default 4: stride / 8, within
            the Sparse Transformer's range of 1/16 to 1/4).
        shared_qk: Reformer's shared-QK keys, the paper's setting (default True).
    """

    def __init__(self, num_heads: int, head_dim: int, max_len: int | None, *, stride: int = 32,
                 summary: int = 4, shared_qk: bool = True):
        _check_positive("stride", stride)
        if not (isinstance(summary, int) and 1 <= summary <= stride):
            raise ValueError(f"summary must be an integer from 1 to stride = {stride}, got {summary!r}")
        super().__init__(max_len, shared_qk, functools.partial(masks.fixed, stride=stride, summary=summary))


class LocalGlobalAttention(PatternAttention):
    """Local plus global attention (QDS-Transformer, Longformer): keys j with
    |i - j| <= window, every key for a global query, every global key for any query.

    The global queries attend densely (one (G, T) block of scores per head); every other
    query goes through sparse_attention over its window and the global keys, so the key
    lists stay 2 window + 1 + G wide instead of T (as one (T, L) list with the global rows
    in it would be): time and memory O(T (window + G)).

    Options:
        window: local half-width (default 16 frames, 160 ms each side).
        global_idx: positions of the global tokens (default (0,), the first frame); those
            beyond a sequence's length are ignored. global_idx=() is purely local.
        shared_qk: shared-QK keys (default False: not a paper row, and QDS-Transformer and
            Longformer project keys separately).
    """

    def __init__(self, num_heads: int, head_dim: int, max_len: int | None, *, window: int = 16,
                 global_idx=(0,), shared_qk: bool = False):
        if not (isinstance(window, int) and window >= 0):
            raise ValueError(f"window must be a non-negative integer, got {window!r}")
        global_idx = tuple(int(g) for g in global_idx)
        if any(g < 0 for g in global_idx):
            raise ValueError(f"global_idx must hold non-negative positions, got {global_idx}")
        self.global_idx = global_idx
        super().__init__(max_len, shared_qk, functools.partial(_local_global, window=window, global_idx=global_idx))

    def forward(self, q, k, v, key_padding_mask, need_weights):
        if self.shared_qk:
            k = keys_from_queries(q)
        length = q.shape[2]
        out, weights = attend_slots(q, k, v, self.indices(length, q.device), key_padding_mask=key_padding_mask,
                                    shared_qk=self.shared_qk, need_weights=need_weights)
        rows = [g for g in self.global_idx if g < length]
        if not rows:
            return out, weights
        rows = torch.tensor(rows, device=q.device)
        allowed = torch.ones(1, 1, len(rows), length, dtype=torch.bool, device=q.device)
        if key_padding_mask is not None:
            allowed = allowed & ~key_padding_mask[:, None, None, :]
        if self.shared_qk:
            allowed = exclude_self(allowed, rows[:, None] == torch.arange(length, device=q.device))
        probs = masked_softmax(q[:, :, rows] @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, allowed)
        out = out.index_copy(2, rows, probs @ v)  # not in place: sparse_attention saved `out`
        return out, (weights.index_copy(2, rows, probs) if need_weights else None)


def _local_global(length: int, *, window: int, global_idx: tuple[int, ...], device=None) -> torch.Tensor:
    """masks.local_global with the global positions a sequence of `length` has, as keys only:
    the module attends from the global queries itself."""
    return masks.local_global(length, window, [g for g in global_idx if g < length], global_queries=False,
                              device=device)
