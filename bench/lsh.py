"""Benchmark LSH key selection: alsh_hash of queries and keys, then topk_keys (hamming),
against the pure-PyTorch path (the references: matmul, bit operations, torch.topk).

    python bench/lsh.py --device cuda --markdown docs/benchmarks.md
"""

from __future__ import annotations

import argparse

import torch

from _timing import header, markdown_table, median_time, peak_memory

import fastattn
from fastattn import ops, reference


def select_keys(lib, q, k, proj, args):
    """Codes of q and k, then each query's L best keys, through `lib` (ops or reference)."""
    q_codes = lib.alsh_hash(q, args.scheme, "query", proj, keys=k)
    k_codes = lib.alsh_hash(k, args.scheme, "key", proj)
    return lib.topk_keys(q_codes, k_codes, args.L)


def row_for_length(length, args):
    generator = torch.Generator().manual_seed(0)
    q, k = (torch.randn(args.batch, args.heads, length, args.dim, generator=generator).to(args.device) for _ in "qk")
    proj = torch.randn(args.bits, args.dim + ops.extra_dims(args.scheme), generator=generator).to(args.device)
    row = {"T": length}
    results = {}
    for name, lib in (("fastattn", ops), ("pytorch", reference)):
        if name == "pytorch" and length > args.dense_max_length:
            row["pytorch ms"] = "skipped"  # its (B, H, T, T) scores would exhaust memory rather than raise
            continue
        try:
            results[name] = select_keys(lib, q, k, proj, args)
            seconds = median_time(lambda: select_keys(lib, q, k, proj, args), warmup=args.warmup, reps=args.reps,
                                  device=args.device)
            peak = peak_memory(lambda: select_keys(lib, q, k, proj, args), args.device)
        except (RuntimeError, MemoryError) as error:  # the dense path runs out of memory first
            print(f"T={length} {name}: {str(error).splitlines()[0][:120]}")
            seconds, peak = None, None
        row[f"{name} ms"] = f"{seconds * 1e3:.2f}" if seconds else "failed"
        if peak is not None:
            row[f"{name} peak MiB"] = f"{peak / 2**20:.0f}"
        if args.device == "cuda":
            torch.cuda.empty_cache()
    if "fastattn" in results and "pytorch" in results:
        # float32 rounding may flip a bit whose projection is within rounding of 0
        differ = (results["fastattn"].cpu() != results["pytorch"].cpu()).any(-1).double().mean()
        row["rows differing"] = f"{100 * differ:.2f}%"
    if row["pytorch ms"] not in ("failed", "skipped"):
        row["speed-up"] = f"{float(row['pytorch ms']) / float(row['fastattn ms']):.1f}x"
    print(row)
    return row


def main():
    cuda = torch.cuda.is_available() and fastattn.built_with_cuda
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if cuda else "cpu", help="where to run")
    parser.add_argument("--lengths", default=None,
                        help="comma-separated T (default: 512..16384 on CUDA, 512..4096 on the CPU)")
    parser.add_argument("--batch", type=int, default=8, help="B")
    parser.add_argument("--heads", type=int, default=12, help="H")
    parser.add_argument("--dim", type=int, default=64, help="D, the head dimension")
    parser.add_argument("--L", type=int, default=64, help="keys selected per query")
    parser.add_argument("--bits", type=int, default=64, help="bits per code")
    parser.add_argument("--scheme", default="sign_alsh", choices=ops.SCHEMES, help="asymmetric transform")
    parser.add_argument("--dense-max-length", type=int, default=None,
                        help="longest T for the pure-PyTorch path (default: 16384 on CUDA, 1024 on the CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default: 5 CUDA, 1 CPU)")
    parser.add_argument("--reps", type=int, default=None, help="timed calls, median reported (default: 20 CUDA, 3 CPU)")
    parser.add_argument("--markdown", default=None, help="append the table to this Markdown file")
    args = parser.parse_args()
    on_cuda = args.device == "cuda"
    lengths = args.lengths or ("512,1024,2048,4096,8192,16384" if on_cuda else "512,1024,2048,4096")
    if args.dense_max_length is None:
        args.dense_max_length = 16384 if on_cuda else 1024
    args.warmup = args.warmup if args.warmup is not None else (5 if on_cuda else 1)
    args.reps = args.reps if args.reps is not None else (20 if on_cuda else 3)

    rows = [row_for_length(int(length), args) for length in lengths.split(",")]
    settings = (f"float32, B={args.batch}, H={args.heads}, D={args.dim}, L={args.L}, {args.bits} bits, "
                f"{args.scheme}, hamming; medians of {args.reps} after {args.warmup} warm-up")
    table = header("alsh_hash + topk_keys", args.device, settings) + "\n" + markdown_table(rows)
    print("\n" + table)
    if args.markdown:
        with open(args.markdown, "a") as out:
            out.write("\n" + table)


if __name__ == "__main__":
    main()
