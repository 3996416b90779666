"""Benchmark fastattn.ops.sparse_attention against what a user would run instead.

Two patterns: "random" (L = 64 random keys per query, per batch item and head, as the
LSH kinds produce) and "strided" (fastattn.masks.strided with stride near sqrt(T)). For
each T, forward and forward+backward medians of
  fastattn   fastattn.ops.sparse_attention(q, k, v, indices)
  gathers    the same with the CUDA kernels' shared-memory key windows turned off
             (FASTATTN_SPARSE_WINDOW=0; CUDA and structured patterns only), which
             measures what staging runs of neighbouring keys gains over row gathers
  sdpa       scaled_dot_product_attention with the equivalent dense boolean mask
  flex       FlexAttention, compiled, with a block mask built once (CUDA only)
  reference  fastattn.reference.sparse_attention (gathers (B, H, T, L, D); short T only)

    python bench/sparse_attention.py --device cuda --dtype bfloat16 --markdown docs/benchmarks.md
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
import torch.nn.functional as F

from _timing import forward_and_backward, parse_arguments, report

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
    """name -> fn(q, k, v)."""
    fns = {"fastattn": lambda a, b, c: ops.sparse_attention(a, b, c, indices)}
    if args.device == "cuda" and indices.shape[:2] == (1, 1):
        fns["gathers"] = fns["fastattn"]  # timed with the windows off, see windows_off
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


@contextlib.contextmanager
def windows_off(off):
    """FASTATTN_SPARSE_WINDOW=0 for the whole timing, so the backward sees it too."""
    if not off:
        yield
        return
    os.environ["FASTATTN_SPARSE_WINDOW"] = "0"
    try:
        yield
    finally:
        del os.environ["FASTATTN_SPARSE_WINDOW"]


def row_for(pattern, length, args):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(args.batch, args.heads, length, args.dim, generator=generator).to(args.device, args.dtype)
               for _ in "qkv")
    indices = pattern_indices(pattern, args, length)
    times = {}
    for name, fn in variants(q, k, v, indices, length, args).items():
        try:
            with windows_off(name == "gathers"):
                times[name] = forward_and_backward(fn, (q, k, v), device=args.device, warmup=args.warmup,
                                                   reps=args.reps)
        except (RuntimeError, MemoryError) as error:
            print(f"{pattern} T={length} {name}: {str(error).splitlines()[0][:120]}")
        if args.device == "cuda":
            torch.cuda.empty_cache()
    ours = times["fastattn"]
    row = {"pattern": pattern, "T": length, "L": indices.shape[-1],
           "fastattn fwd ms": f"{ours[0] * 1e3:.2f}", "fastattn fwd+bwd ms": f"{ours[1] * 1e3:.2f}"}
    for name in ("gathers", "sdpa", "flex", "reference"):
        if name in times:
            row[f"vs {name} fwd"] = f"{times[name][0] / ours[0]:.1f}x"
            row[f"vs {name} fwd+bwd"] = f"{times[name][1] / ours[1]:.1f}x"
    if ours[2] is not None:
        row["peak MiB fastattn / sdpa"] = f"{ours[2] / 2**20:.0f} / " + (
            f"{times['sdpa'][2] / 2**20:.0f}" if "sdpa" in times else "-")
    print(row)
    return row


def main():
    def own_options(parser):
        parser.add_argument("--patterns", default="random,strided", help="comma-separated: random, strided")
        parser.add_argument("--L", type=int, default=64, help="keys per query of the random pattern")
        parser.add_argument("--reference-max-length", type=int, default=2048,
                            help="longest T for the reference, which gathers (B, H, T, L, D)")

    args = parse_arguments(__doc__, cuda_lengths="1024,2048,4096,8192,16384", cpu_lengths="1024,2048,4096",
                           cuda_timing=(5, 20), extra=own_options)
    rows = [row_for(pattern, length, args) for pattern in args.patterns.split(",") for length in args.lengths]
    settings = (f"{str(args.dtype).removeprefix('torch.')}, B={args.batch}, H={args.heads}, D={args.dim}; "
                "speed-ups are other time / fastattn time")
    report("sparse_attention", args, settings, rows)


if __name__ == "__main__":
    main()
