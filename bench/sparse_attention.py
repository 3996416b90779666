"""Benchmark fastattn.ops.sparse_attention against what a user would run instead.

Two patterns: "random" (L = 64 random keys per query, per batch item and head, as the
LSH kinds produce) and "strided" (fastattn.masks.strided with stride near sqrt(T)). For
each T, forward and forward+backward medians of
  fastattn   fastattn.ops.sparse_attention(q, k, v, indices)
  sdpa       scaled_dot_product_attention with the equivalent dense boolean mask
  flex       FlexAttention, compiled, with a block mask built once (CUDA only)
  reference  fastattn.reference.sparse_attention (gathers (B, H, T, L, D); short T only)

    python bench/sparse_attention.py --device cuda --dtype bfloat16 --markdown docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from _timing import header, markdown_table, median_time, peak_memory

import fastattn
from fastattn import masks, ops, reference


def pattern_indices(pattern, args, length):
    if pattern == "strided":
        return masks.strided(length, max(1, round(math.sqrt(length))), device=args.device)
    generator = torch.Generator().manual_seed(1)
    shape = (args.batch, args.heads, length, args.L)
    return torch.randint(0, length, shape, generator=generator).int().to(args.device)


def dense_mask(indices, length):
    """(B or 1, H or 1, T, T) bool, True where a query attends to a key."""
    rows = indices.long().where(indices >= 0, length)
    allowed = torch.zeros(*indices.shape[:3], length + 1, dtype=torch.bool, device=indices.device)
    return allowed.scatter_(-1, rows, True)[..., :length]


def variants(q, k, v, indices, length, args):
    """name -> (fn(q, k, v), enabled)."""
    fns = {"fastattn": lambda a, b, c: ops.sparse_attention(a, b, c, indices)}
    mask = dense_mask(indices, length)
    fns["sdpa"] = lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=mask)
    if args.device == "cuda":
        flex = flex_fn(indices, mask, length, args)
        if flex is not None:
            fns["flex"] = flex
    if length <= args.reference_max_length:
        fns["reference"] = lambda a, b, c: reference.sparse_attention(a, b, c, indices)
    return fns


def flex_fn(indices, mask, length, args):
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as error:
        print(f"flex: unavailable ({error})")
        return None
    per_head = mask.shape[0] > 1 or mask.shape[1] > 1

    def mask_mod(b, h, q_idx, kv_idx):
        return mask[b, h, q_idx, kv_idx] if per_head else mask[0, 0, q_idx, kv_idx]

    block_mask = create_block_mask(mask_mod, args.batch if per_head else None, args.heads if per_head else None,
                                   length, length, device=args.device)
    compiled = torch.compile(flex_attention)
    return lambda a, b, c: compiled(a, b, c, block_mask=block_mask)


def measure(fn, leaves, args):
    leaves = [x.detach().requires_grad_() for x in leaves]
    grad_out = torch.randn_like(fn(*leaves))

    def forward():
        with torch.no_grad():
            fn(*leaves)

    def forward_backward():
        torch.autograd.backward(fn(*leaves), grad_out)
        for x in leaves:
            x.grad = None

    return (median_time(forward, warmup=args.warmup, reps=args.reps, device=args.device),
            median_time(forward_backward, warmup=args.warmup, reps=args.reps, device=args.device),
            peak_memory(forward_backward, args.device))


def row_for(pattern, length, args):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(args.batch, args.heads, length, args.dim, generator=generator).to(args.device, args.dtype)
               for _ in "qkv")
    indices = pattern_indices(pattern, args, length)
    times = {}
    for name, fn in variants(q, k, v, indices, length, args).items():
        try:
            times[name] = measure(fn, (q, k, v), args)
        except (RuntimeError, MemoryError) as error:
            print(f"{pattern} T={length} {name}: {str(error).splitlines()[0][:120]}")
        if args.device == "cuda":
            torch.cuda.empty_cache()
    ours = times["fastattn"]
    row = {"pattern": pattern, "T": length, "L": indices.shape[-1],
           "fastattn fwd ms": f"{ours[0] * 1e3:.2f}", "fastattn fwd+bwd ms": f"{ours[1] * 1e3:.2f}"}
    for name in ("sdpa", "flex", "reference"):
        if name in times:
            row[f"vs {name} fwd"] = f"{times[name][0] / ours[0]:.1f}x"
            row[f"vs {name} fwd+bwd"] = f"{times[name][1] / ours[1]:.1f}x"
    if ours[2] is not None:
        row["peak MiB fastattn / sdpa"] = f"{ours[2] / 2**20:.0f} / " + (
            f"{times['sdpa'][2] / 2**20:.0f}" if "sdpa" in times else "-")
    print(row)
    return row


def main():
    cuda = torch.cuda.is_available() and fastattn.built_with_cuda
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if cuda else "cpu", help="where to run")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--lengths", default=None,
                        help="comma-separated T (default: 1024..16384 on CUDA, 1024,2048,4096 on the CPU)")
    parser.add_argument("--patterns", default="random,strided", help="comma-separated: random, strided")
    parser.add_argument("--batch", type=int, default=8, help="B")
    parser.add_argument("--heads", type=int, default=12, help="H")
    parser.add_argument("--dim", type=int, default=64, help="D, the head dimension")
    parser.add_argument("--L", type=int, default=64, help="keys per query of the random pattern")
    parser.add_argument("--reference-max-length", type=int, default=2048,
                        help="longest T for the reference, which gathers (B, H, T, L, D)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default: 5 CUDA, 1 CPU)")
    parser.add_argument("--reps", type=int, default=None, help="timed calls, median reported (default: 20 CUDA, 3 CPU)")
    parser.add_argument("--markdown", default=None, help="append the table to this Markdown file")
    args = parser.parse_args()
    on_cuda = args.device == "cuda"
    args.dtype = getattr(torch, args.dtype or ("bfloat16" if on_cuda else "float32"))
    lengths = args.lengths or ("1024,2048,4096,8192,16384" if on_cuda else "1024,2048,4096")
    args.warmup = args.warmup if args.warmup is not None else (5 if on_cuda else 1)
    args.reps = args.reps if args.reps is not None else (20 if on_cuda else 3)

    rows = [row_for(pattern, int(length), args) for pattern in args.patterns.split(",")
            for length in lengths.split(",")]
    settings = (f"{str(args.dtype).removeprefix('torch.')}, B={args.batch}, H={args.heads}, D={args.dim}; "
                f"medians of {args.reps} after {args.warmup} warm-up; speed-ups are other time / fastattn time")
    table = header("sparse_attention", args.device, settings) + "\n" + markdown_table(rows)
    print("\n" + table)
    if args.markdown:
        with open(args.markdown, "a") as out:
            out.write("\n" + table)


if __name__ == "__main__":
    main()
