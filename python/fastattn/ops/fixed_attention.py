"""fixed_attention: attention with input-independent weights (SPEC section 5)."""

from __future__ import annotations

import torch

from fastattn.ops import _checks

__all__ = ["fixed_attention"]


def fixed_attention(
    logits: torch.Tensor, v: torch.Tensor, *, key_padding_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention whose weights are a learned parameter instead of a function of the input.

    out[b, h, i] = sum_j softmax_j(logits[h, i, j] over the non-padded j of item b) v[b, h, j]

    Args:
        logits: (H, T, T) attention logits, any strides; a crop ``R[:, :T, :T]`` of a
            larger (H, max_len, max_len) parameter is the usual argument. Same dtype as v.
        v: (B, H, T, D) values. float32 or float64 on the CPU; float32, float16 or
            bfloat16 on CUDA (accumulated in float32).
        key_padding_mask: optional (B, T) bool, True = padding (ignore this key).

    Returns:
        (B, H, T, D), contiguous. A query row with no key to attend to gives zeros (and
        zero gradients). Without a mask the softmax is computed once and shared by the
        batch; with one, once per batch item. Differentiable in logits (the gradient is
        summed over the batch, deterministically) and v.
    """
    _check_arguments(logits, v, key_padding_mask)
    out, _ = torch.ops.fastattn.fixed_attention_forward(logits, v, key_padding_mask)
    return out


def _check_arguments(logits: object, v: object, key_padding_mask: object) -> None:
    _checks.tensor("logits", logits, 3, "(H, T, T)")
    _checks.tensor("v", v, 4, "(B, H, T, D)")
    _checks.size("logits", logits, 2, logits.shape[1], "T: logits must be square in its last two dimensions")
    _checks.size("v", v, 1, logits.shape[0], "H, the heads of logits")
    _checks.size("v", v, 2, logits.shape[1], "T, the length of logits")
    _checks.same_device("logits", logits, "v", v)
    _checks.float_dtype("v", v)
    _checks.same_dtype("logits", logits, "v", v)
    _checks.key_padding_mask(key_padding_mask, v.shape[0], v.shape[2], v)
    if v.device.type == "cuda":
        _check_cuda_grid(v)


# The CUDA kernels put the heads and (batch, 64-column tiles of D) on grid dimensions
# that hold at most 65535 blocks each.
_MAX_GRID_YZ = 65535


def _check_cuda_grid(v: torch.Tensor) -> None:
    batch, heads, _, dim = v.shape
    if heads > _MAX_GRID_YZ:
        raise ValueError(f"v may have at most {_MAX_GRID_YZ} heads (H) on CUDA, got shape {tuple(v.shape)}")
    if batch * -(-dim // 64) > _MAX_GRID_YZ:
        raise ValueError(
            f"v on CUDA needs B * ceil(D / 64) <= {_MAX_GRID_YZ}, got B = {batch}, D = {dim}: split the batch"
        )


def _statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("fastattn::fixed_attention_forward")
def _forward_fake(logits, v, key_padding_mask):
    _check_arguments(logits, v, key_padding_mask)
    batch, heads, length, _ = v.shape
    sets = batch if key_padding_mask is not None else 1
    out = torch.empty_like(v, memory_format=torch.contiguous_format)
    lse = v.new_empty((sets, heads, length), dtype=_statistics_dtype(v.dtype))
    return out, lse


@torch.library.register_fake("fastattn::fixed_attention_backward")
def _backward_fake(grad_out, logits, v, key_padding_mask, out, lse):
    grad_logits = logits.new_empty(logits.shape)
    grad_v = torch.empty_like(v, memory_format=torch.contiguous_format)
    return grad_logits, grad_v


def _setup_context(ctx, inputs, output):
    logits, v, key_padding_mask = inputs
    out, lse = output
    ctx.save_for_backward(logits, v, key_padding_mask, out, lse)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, _grad_lse):
    logits, v, key_padding_mask, out, lse = ctx.saved_tensors
    grad_logits, grad_v = torch.ops.fastattn.fixed_attention_backward(
        grad_out, logits, v, key_padding_mask, out, lse
    )
    return grad_logits, grad_v, None


def _double_backward(ctx, *grads):
    raise NotImplementedError("fixed_attention does not support double backward (create_graph=True)")


torch.library.register_autograd("fastattn::fixed_attention_forward", _backward, setup_context=_setup_context)
torch.library.register_autograd("fastattn::fixed_attention_backward", _double_backward)
