"""Benchmark LSH key selection: alsh_hash of queries and keys, then topk_keys (hamming),
against the pure-PyTorch path (the references: matmul, bit operations, torch.topk), and
against the dense attention it should save: SDPA's forward of the same shape. On the CPU
fastattn is also timed on one thread, for its scaling with the threads torch uses.

    python bench/lsh.py --device cuda --markdown docs/benchmarks.md
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from _timing import median_time, parse_arguments, peak_memory, report

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
    if "fastattn" in results:
        ours = float(row["fastattn ms"]) / 1e3
        v = torch.randn_like(q)
        with torch.no_grad():
            sdpa = median_time(lambda: F.scaled_dot_product_attention(q, k, v), warmup=args.warmup, reps=args.reps,
                               device=args.device)
        row["sdpa fwd ms"] = f"{sdpa * 1e3:.2f}"
        row["fastattn / sdpa fwd"] = f"{ours / sdpa:.2f}"
        threads = torch.get_num_threads()
        if args.device == "cpu" and threads > 1:
            torch.set_num_threads(1)
            one = median_time(lambda: select_keys(ops, q, k, proj, args), warmup=args.warmup, reps=args.reps)
            torch.set_num_threads(threads)
            row[f"{threads} threads / 1"] = f"{one / ours:.2f}x"
    print(row)
    return row


def main():
    def own_options(parser):
        parser.add_argument("--L", type=int, default=64, help="keys selected per query")
        parser.add_argument("--bits", type=int, default=64, help="bits per code")
        parser.add_argument("--scheme", default="sign_alsh", choices=ops.SCHEMES, help="asymmetric transform")
        parser.add_argument("--dense-max-length", type=int, default=None,
                            help="longest T for the pure-PyTorch path (default: 16384 on CUDA, 1024 on the CPU)")

    args = parse_arguments(__doc__, cuda_lengths="512,1024,2048,4096,8192,16384", cpu_lengths="512,1024,2048,4096",
                           cuda_timing=(5, 20), dtype=False, extra=own_options)
    if args.dense_max_length is None:
        args.dense_max_length = 16384 if args.device == "cuda" else 1024
    rows = [row_for_length(length, args) for length in args.lengths]
    settings = (f"float32, B={args.batch}, H={args.heads}, D={args.dim}, L={args.L}, {args.bits} bits, "
                f"{args.scheme}, hamming")
    report("alsh_hash + topk_keys", args, settings, rows)


if __name__ == "__main__":
    main()
