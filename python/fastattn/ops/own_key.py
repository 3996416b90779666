"""drop_own_key_: shared-QK self exclusion on a key list, in place (SPEC's `shared_qk`
row: a token does not attend to itself unless nothing else is valid)."""

from __future__ import annotations

import torch

from fastattn.ops import _checks

__all__ = ["drop_own_key_"]


def drop_own_key_(indices):
    """Empty, in place, the slots of each row that name the row's own query, unless the row
    lists no other key.

    Row i of a query list (dimension 2) belongs to query i; its own key is key i, as under
    Reformer's shared-QK keys, where a query's own key outscores every other.

    Args:
        indices: int32 or int64 (B, H, T, L) key lists as ``sparse_attention`` takes them,
            -1 for an empty slot; any strides (a broadcast view, with stride 0, would be
            written through by several rows: pass a tensor that owns its elements).

    Returns:
        ``indices``, changed: a slot equal to i becomes -1 where another slot of row i
        holds a key (a value >= 0 other than i); a row whose only listed key is i keeps it.
    """
    _check(indices)
    torch.ops.fastattn.drop_own_key_(indices)
    return indices


def _check(indices) -> None:
    _checks.tensor("indices", indices, 4, "(B, H, T, L)")
    if indices.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"indices must be int32 or int64, got {indices.dtype}")
    if indices.device.type not in ("cpu", "cuda"):
        raise ValueError(f"indices is on {indices.device}; fastattn has kernels for cpu and cuda")
    # Stride 0 on a dimension of size 1 aliases nothing.
    if any(stride == 0 and size > 1 for stride, size in zip(indices.stride(), indices.shape)):
        raise ValueError(f"indices must own its elements (no stride 0 of a broadcast view), got strides "
                         f"{indices.stride()}: pass indices.contiguous()")


@torch.library.register_fake("fastattn::drop_own_key_")
def _drop_own_key_fake(indices):
    _check(indices)
