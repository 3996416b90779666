"""Benchmark fastattn.ops.fixed_attention against what a user would run instead.

For each sequence length T: forward and forward+backward medians of
  fastattn   fastattn.ops.fixed_attention(logits (H, T, T), v (B, H, T, D))
  reference  fastattn.reference.fixed_attention, the pure-PyTorch path, same dtype
  sdpa       torch.nn.functional.scaled_dot_product_attention, full attention of the same shape
  flex       FlexAttention (compiled) with score_mod returning logits[h, i, j] (CUDA only)
  matmul     (CUDA only) the bare products the op needs: P V forward; P^T dO and
             sum_b dO V^T backward, with P precomputed: the floor for this algorithm
and the speed-ups of fastattn over each, plus its achieved FLOP rate. With --padded every
item keeps a random number of keys between T/2 and T (a padded batch), and every variant
gets that padding (SDPA as a boolean attn_mask, FlexAttention in its score_mod).

    python bench/fixed_attention.py --device cuda --dtype bfloat16 --markdown docs/benchmarks.md
    python bench/fixed_attention.py --padded --dim 16
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from _timing import forward_and_backward, parse_arguments, report

from fastattn import ops, reference


def inputs(batch, heads, length, dim, device, dtype, padded):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(heads, length, length, generator=generator).to(device, dtype)
    q, k, v = (torch.randn(batch, heads, length, dim, generator=generator).to(device, dtype) for _ in range(3))
    mask = None
    if padded:  # True = padding: each item keeps its first `kept` keys
        kept = torch.randint(length // 2, length + 1, (batch, 1), generator=generator)
        mask = (torch.arange(length) >= kept).to(device)
    return logits, q, k, v, mask


def forward_fns(logits, q, k, v, mask, device) -> dict[str, Callable[..., torch.Tensor] | None]:
    """Each variant as fn(*leaves) -> output, with the leaves it differentiates."""
    keep = None if mask is None else ~mask[:, None, None, :]
    fns = {
        "fastattn": (lambda l, x: ops.fixed_attention(l, x, key_padding_mask=mask), (logits, v)),
        "reference": (lambda l, x: reference.fixed_attention(l, x, mask), (logits, v)),
        "sdpa": (lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=keep), (q, k, v)),
    }
    if device == "cuda":
        fns["flex"] = flex_attention_fn(logits, q, k, v, mask)
        probs = torch.softmax(logits.float(), -1).to(v.dtype)
        fns["matmul"] = (lambda p, x: bare_products(p, x), (probs, v))
    return fns


def bare_products(probs, v):
    """P V in the forward; its autograd runs P^T dO and dO V^T summed over the batch."""
    return probs @ v


def flex_attention_fn(logits, q, k, v, mask):
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError as error:
        print(f"flex: unavailable ({error})")
        return None
    compiled = torch.compile(flex_attention)

    def fixed_weights(score, b, h, q_idx, kv_idx):
        if mask is None:
            return logits_leaf[h, q_idx, kv_idx]
        return torch.where(mask[b, kv_idx], -float("inf"), logits_leaf[h, q_idx, kv_idx])

    logits_leaf = logits

    def run(l, a, b, c):
        nonlocal logits_leaf
        logits_leaf = l
        return compiled(a, b, c, score_mod=fixed_weights)

    return run, (logits, q, k, v)


def row_for_length(length, args):
    logits, q, k, v, mask = inputs(args.batch, args.heads, length, args.dim, args.device, args.dtype, args.padded)
    times = {}
    for name, variant in forward_fns(logits, q, k, v, mask, args.device).items():
        if variant is None:
            continue
        try:
            fn, leaves = variant
            times[name] = forward_and_backward(fn, leaves, device=args.device, warmup=args.warmup, reps=args.reps)
        except (RuntimeError, MemoryError) as error:  # out of memory, or no kernel for this dtype
            print(f"T={length} {name}: {str(error).splitlines()[0][:120]}")
        if args.device == "cuda":
            torch.cuda.empty_cache()
    ours = times["fastattn"]
    flops = 2 * args.batch * args.heads * length * length * args.dim  # P V; the backward has two more
    row = {"T": length,
           "fastattn fwd ms": f"{ours[0] * 1e3:.3f}", "fastattn fwd+bwd ms": f"{ours[1] * 1e3:.3f}",
           "fwd GFLOP/s": f"{flops / ours[0] / 1e9:.0f}", "fwd+bwd GFLOP/s": f"{3 * flops / ours[1] / 1e9:.0f}"}
    for name in ("reference", "sdpa", "flex"):
        if args.device == "cuda" or name != "flex":
            other = times.get(name)
            row[f"vs {name} fwd"] = f"{other[0] / ours[0]:.2f}x" if other else "failed"
            row[f"vs {name} fwd+bwd"] = f"{other[1] / ours[1]:.2f}x" if other else "failed"
    if "matmul" in times:
        row["fwd+bwd / bare matmul"] = f"{ours[1] / times['matmul'][1]:.2f}x"
    if ours[2] is not None:
        row["peak MiB fastattn / reference"] = (
            f"{ours[2] / 2**20:.0f} / " + (f"{times['reference'][2] / 2**20:.0f}" if "reference" in times else "-"))
    print(row)
    return row


def main():
    args = parse_arguments(__doc__, cuda_lengths="256,512,1024,2048,4096", cpu_lengths="256,512,1024,2048",
                           extra=lambda parser: parser.add_argument(
                               "--padded", action="store_true", help="pad each item to a random length in [T/2, T]"))
    rows = [row_for_length(length, args) for length in args.lengths]
    padding = ", padded to random lengths in [T/2, T]" if args.padded else ""
    settings = (f"{str(args.dtype).removeprefix('torch.')}, B={args.batch}, H={args.heads}, D={args.dim}{padding}; "
                "speed-ups are other time / fastattn time")
    report("fixed_attention", args, settings, rows)


if __name__ == "__main__":
    main()
