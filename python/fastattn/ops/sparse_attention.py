"""sparse_attention: each query attends to its own list of keys (SPEC section 4)."""

from __future__ import annotations

import math

import torch

from fastattn.ops import _checks

__all__ = ["sparse_attention"]

# Limits of the CUDA kernels (a row's scores and a row of q wait in shared memory).
MAX_SLOTS_CUDA = 512
MAX_DIM_CUDA = 256


def sparse_attention(q, k, v, indices, *, scale=None):
    """Softmax attention of each query over the keys its row of ``indices`` lists.

    out[b, h, i] = sum_{l valid} softmax_l(scale q_i . k_j) v_j, with j = indices[.., i, l]

    Args:
        q: (B, H, Tq, D) queries; k, v: (B, H, Tk, D) keys and values; one dtype:
            float32 or float64 on the CPU, float32, float16 or bfloat16 on CUDA.
        indices: int32 or int64 (B or 1, H or 1, Tq, L), broadcast over batch and heads;
            -1 marks an empty slot; a key listed twice counts twice. ``fastattn.masks``
            builds the structured patterns. L up to 512 on CUDA.
        scale: the score scale, default 1 / sqrt(D).

    Returns:
        (B, H, Tq, D), contiguous; a row with no valid slot gives zeros and zero gradients.
        Memory is O(B H T L), never O(T^2); the backward is deterministic. On CUDA the op
        never waits for the device, so it can be captured in a CUDA graph; index values
        are checked before launching, except under capture, where a slot outside
        [0, Tk) counts as empty.
    """
    scale = _check_arguments(q, k, v, indices, scale)
    out, _ = torch.ops.fastattn.sparse_attention_forward(q, k, v, indices, scale)
    return out


def _check_arguments(q, k, v, indices, scale) -> float:
    """Checks everything but the index values (those need the data: the kernels check
    them) and returns the scale to use."""
    _checks.tensor("q", q, 4, "(B, H, Tq, D)")
    _checks.tensor("k", k, 4, "(B, H, Tk, D)")
    _checks.tensor("v", v, 4, "(B, H, Tk, D)")
    _checks.float_dtype("q", q)
    for name, x in (("k", k), ("v", v)):
        _checks.same_device(name, x, "q", q)
        _checks.same_dtype(name, x, "q", q)
    for dim, meaning in ((0, "B of q"), (1, "H of q"), (3, "D of q")):
        _checks.size("k", k, dim, q.shape[dim], meaning)
    if v.shape != k.shape:
        raise ValueError(f"v must be shaped like k {tuple(k.shape)}, got {tuple(v.shape)}")
    _checks.tensor("indices", indices, 4, "(B or 1, H or 1, Tq, L)")
    if indices.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"indices must be int32 or int64, got {indices.dtype}")
    _checks.same_device("indices", indices, "q", q)
    for dim, size, meaning in ((0, q.shape[0], "B"), (1, q.shape[1], "H")):
        if indices.shape[dim] not in (1, size):
            raise ValueError(f"indices must have size 1 or {meaning} = {size} in dimension {dim}, "
                             f"got shape {tuple(indices.shape)}")
    _checks.size("indices", indices, 2, q.shape[2], "Tq, the queries")
    if q.device.type == "cuda" and indices.shape[3] > MAX_SLOTS_CUDA:
        raise ValueError(f"indices may have at most {MAX_SLOTS_CUDA} slots (L) on CUDA, got {indices.shape[3]}")
    if q.device.type == "cuda" and q.shape[3] > MAX_DIM_CUDA:
        raise ValueError(f"q may have at most D = {MAX_DIM_CUDA} on CUDA (sparse_attention), got {q.shape[3]}")
    if scale is None:
        return 1.0 / math.sqrt(q.shape[3]) if q.shape[3] else 1.0
    if not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    return float(scale)


def _statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("fastattn::sparse_attention_forward")
def _forward_fake(q, k, v, indices, scale):
    _check_arguments(q, k, v, indices, scale)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    return out, q.new_empty(q.shape[:3], dtype=_statistics_dtype(q.dtype))


@torch.library.register_fake("fastattn::sparse_attention_backward")
def _backward_fake(grad_out, q, k, v, indices, scale, out, lse):
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) for x in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, indices, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, indices, out, lse)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, indices, out, lse = ctx.saved_tensors
    grads = torch.ops.fastattn.sparse_attention_backward(grad_out, q, k, v, indices, ctx.scale, out, lse)
    return (*grads, None, None)


def _double_backward(ctx, *grads):
    raise NotImplementedError("sparse_attention does not support double backward (create_graph=True)")


torch.library.register_autograd("fastattn::sparse_attention_forward", _backward, setup_context=_setup_context)
torch.library.register_autograd("fastattn::sparse_attention_backward", _double_backward)
