"""Benchmark fastattn.nn.SelfAttention of every kind against `full`, as a user runs it:
a batch padded to random lengths or not, inference (eval, no_grad) and a training step
(forward, mean square of the output, backward, SGD step), at each T. Ratios are kind time / full
time in the same run (below 1 is faster).

    python bench/attention_kinds.py                        # embed 192, 12 heads (head size 16)
    python bench/attention_kinds.py --embed 768 --lengths 500 --markdown docs/benchmarks.md
"""

from __future__ import annotations

import torch

from _timing import median_time, parse_arguments, report

from fastattn.nn import KINDS, SelfAttention, needs_max_len


def padding(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """(B, T) True = padding: each item keeps its first `kept` positions, kept in [T/2, T]."""
    kept = torch.randint(length // 2, length + 1, (batch, 1), generator=generator)
    return torch.arange(length) >= kept


def workloads(kind, length, padded, args):
    """(training step, inference) closures for one kind on one batch."""
    torch.manual_seed(0)
    options = {"max_len": length} if needs_max_len(kind) else {}
    module = SelfAttention(args.embed, args.heads, kind=kind, **options).to(args.device, args.dtype)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, length, args.embed, generator=generator).to(args.device, args.dtype)
    mask = padding(args.batch, length, generator).to(args.device) if padded else None
    # A loss and step small enough that the weights stay where they started: a diverging
    # model would time overflow and denormals instead of the attention.
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-4)

    def training_step():
        module.train()
        out, _ = module(x, key_padding_mask=mask)
        out.square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def inference():
        module.eval()
        with torch.no_grad():
            module(x, key_padding_mask=mask)

    return training_step, inference


def rows_for(length, padded, args):
    times = {}
    for kind in args.kinds:
        train, infer = workloads(kind, length, padded, args)
        timing = dict(warmup=args.warmup, reps=args.reps, device=args.device)
        times[kind] = (median_time(train, **timing), median_time(infer, **timing))
        print(f"T={length} padded={padded} {kind}: {times[kind]}", flush=True)
    full = times.get("full")
    rows = []
    for kind, (train, infer) in times.items():
        row = {"T": length, "padded": "yes" if padded else "no", "kind": kind,
               "inference ms": f"{infer * 1e3:.1f}", "train step ms": f"{train * 1e3:.1f}"}
        if full:
            row.update({"inference / full": f"{infer / full[1]:.2f}", "train / full": f"{train / full[0]:.2f}"})
        rows.append(row)
    return rows


def main():
    def own_options(parser):
        parser.add_argument("--embed", type=int, default=192, help="embedding size (head size: embed / heads)")
        parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds (default: all)")
        parser.add_argument("--padding", choices=["both", "no", "yes"], default="both", help="padded batches or not")

    args = parse_arguments(__doc__, cuda_lengths="500,3000", cpu_lengths="500,3000", cuda_timing=(3, 10),
                           cpu_timing=(1, 3), extra=own_options)
    args.kinds = args.kinds.split(",")
    if "full" in args.kinds:  # the baseline first, so every ratio has it
        args.kinds.remove("full")
    args.kinds.insert(0, "full")
    paddings = {"both": (False, True), "no": (False,), "yes": (True,)}[args.padding]
    rows = [row for length in args.lengths for padded in paddings for row in rows_for(length, padded, args)]
    settings = (f"SelfAttention({args.embed}, {args.heads}), head size {args.embed // args.heads}, "
                f"{str(args.dtype).removeprefix('torch.')}, B={args.batch}; padded items keep a random length in "
                "[T/2, T]; ratios are kind time / full time")
    report("attention kinds", args, settings, rows)


if __name__ == "__main__":
    main()
