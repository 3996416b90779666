"""Timing and reporting helpers shared by the benchmarks in bench/.

Times are medians over repetitions after warm-up (fastattn.timing.median_time); CUDA work is
timed with events on the current stream, so only GPU time between the two events counts.
"""

from __future__ import annotations

import argparse
import datetime
from typing import Callable

import torch

from fastattn.timing import machine, median_time


def forward_and_backward(fn: Callable[..., torch.Tensor], leaves, *, device: str, warmup: int, reps: int):
    """(forward seconds, forward+backward seconds, forward+backward peak bytes or None) of
    fn(*leaves), differentiating every leaf against a fixed random output gradient."""
    leaves = [leaf.detach().requires_grad_() for leaf in leaves]
    grad_out = torch.randn_like(fn(*leaves))

    def forward():
        with torch.no_grad():
            fn(*leaves)

    def forward_backward():
        torch.autograd.backward(fn(*leaves), grad_out)
        for leaf in leaves:
            leaf.grad = None

    return (median_time(forward, warmup=warmup, reps=reps, device=device),
            median_time(forward_backward, warmup=warmup, reps=reps, device=device),
            peak_memory(forward_backward, device))


def peak_memory(fn: Callable[[], object], device: str) -> int | None:
    """Bytes of CUDA memory one call of `fn` allocates at its peak beyond what was already
    allocated; None on the CPU, where torch keeps no such count."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def header(title: str, device: str, settings: str) -> str:
    today = datetime.date.today().isoformat()
    return f"{title}: {today}, {machine(device)}, torch {torch.__version__}; {settings}\n"


def markdown_table(rows: list[dict[str, object]]) -> str:
    """Every column any row has, in first-seen order; "-" where a row lacks one."""
    columns = list(dict.fromkeys(column for row in rows for column in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "-")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def parse_arguments(doc: str, *, cuda_lengths: str, cpu_lengths: str, cuda_timing=(10, 30), cpu_timing=(1, 3),
                    dtype: bool = True, extra: Callable[[argparse.ArgumentParser], None] | None = None):
    """The options every benchmark shares (device, dtype, lengths, B, H, D, warm-up, repetitions,
    Markdown output) plus the script's own (`extra`), with device-dependent defaults filled in:
    args.lengths becomes a list of ints and args.dtype a torch dtype."""
    from fastattn import built_with_cuda

    cuda = torch.cuda.is_available() and built_with_cuda
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if cuda else "cpu", help="where to run")
    if dtype:
        parser.add_argument("--dtype", default=None,
                            help="float32, float16 or bfloat16 (default: bfloat16 on CUDA, float32 on the CPU)")
    parser.add_argument("--lengths", default=None,
                        help=f"comma-separated T (default: {cuda_lengths} on CUDA, {cpu_lengths} on the CPU)")
    parser.add_argument("--batch", type=int, default=8, help="B")
    parser.add_argument("--heads", type=int, default=12, help="H")
    parser.add_argument("--dim", type=int, default=64, help="D, the head dimension")
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"untimed calls first (default: {cuda_timing[0]} CUDA, {cpu_timing[0]} CPU)")
    parser.add_argument("--reps", type=int, default=None,
                        help=f"timed calls, median reported (default: {cuda_timing[1]} CUDA, {cpu_timing[1]} CPU)")
    parser.add_argument("--markdown", default=None, help="append the table to this Markdown file")
    if extra:
        extra(parser)
    args = parser.parse_args()
    on_cuda = args.device == "cuda"
    if dtype:
        args.dtype = getattr(torch, args.dtype or ("bfloat16" if on_cuda else "float32"))
    args.lengths = [int(t) for t in (args.lengths or (cuda_lengths if on_cuda else cpu_lengths)).split(",")]
    timing = cuda_timing if on_cuda else cpu_timing
    args.warmup = timing[0] if args.warmup is None else args.warmup
    args.reps = timing[1] if args.reps is None else args.reps
    return args


def report(title: str, args, settings: str, rows: list[dict[str, object]]) -> None:
    """Print the table under its header and append it to args.markdown if given."""
    table = header(title, args.device, f"{settings}; medians of {args.reps} after {args.warmup} warm-up") + "\n"
    table += markdown_table(rows)
    print("\n" + table)
    if args.markdown:
        with open(args.markdown, "a") as out:
            out.write("\n" + table)
