"""Benchmark the Audio ALBERT encoder with each attention kind: the time of a training
step (forward, L1 loss, backward, SGD step) and of inference (eval, no_grad forward), at
T = 500 (the paper's Table 1 setting) and T = 3000, as ratios to `full`.

Each kind runs with its default options (fastattn.nn.kind_options); the synth_* and
fixed_pattern kinds get max_len = T.

    python bench/encoder.py                                  # tiny config on the CPU
    python bench/encoder.py --size paper --device cuda --markdown results.md
"""

from __future__ import annotations

import argparse

import torch

from _timing import median_time, peak_memory, report

from fastattn import built_with_cuda
from fastattn.timing import encoder_workloads
from fastattn.nn import KINDS, AudioALBERT, AudioALBERTConfig

SIZES = {"tiny": AudioALBERTConfig.tiny, "paper": AudioALBERTConfig.paper}


def parse_arguments():
    cuda = torch.cuda.is_available() and built_with_cuda
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if cuda else "cpu", help="where to run")
    parser.add_argument("--size", choices=list(SIZES), default=None,
                        help="encoder size: AudioALBERTConfig.tiny or .paper (default: paper on CUDA, tiny on the CPU)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated attention kinds (default: all)")
    parser.add_argument("--lengths", default="500,3000", help="comma-separated T (default 500,3000)")
    parser.add_argument("--batch", type=int, default=None, help="B (default: 8 on CUDA, 2 on the CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default: 3 CUDA, 1 CPU)")
    parser.add_argument("--reps", type=int, default=None, help="timed calls, median reported (default: 10 CUDA, 3 CPU)")
    parser.add_argument("--markdown", default=None, help="append the table to this Markdown file")
    args = parser.parse_args()
    on_cuda = args.device == "cuda"
    args.size = args.size or ("paper" if on_cuda else "tiny")
    args.kinds = args.kinds.split(",")
    args.lengths = [int(t) for t in args.lengths.split(",")]
    args.batch = args.batch or (8 if on_cuda else 2)
    args.warmup = (3 if on_cuda else 1) if args.warmup is None else args.warmup
    args.reps = (10 if on_cuda else 3) if args.reps is None else args.reps
    return args


def times(kind, length, args):
    """(training-step seconds, inference seconds, training peak bytes or None) of the encoder."""
    config = SIZES[args.size](attention=kind, max_len=length)
    torch.manual_seed(0)
    model = AudioALBERT(config).to(args.device)
    training_step, inference = encoder_workloads(model, torch.randn(args.batch, length, config.input_dim,
                                                                    device=args.device))
    train = median_time(training_step, warmup=args.warmup, reps=args.reps, device=args.device)
    peak = peak_memory(training_step, args.device)
    return train, median_time(inference, warmup=args.warmup, reps=args.reps, device=args.device), peak


def rows_for_length(length, args):
    results = {}
    for kind in args.kinds:
        try:
            results[kind] = times(kind, length, args)
        except (RuntimeError, MemoryError) as error:  # out of memory
            print(f"T={length} {kind}: {str(error).splitlines()[0][:120]}")
        if args.device == "cuda":
            torch.cuda.empty_cache()
        print(f"T={length} {kind}: {results.get(kind)}", flush=True)
    baseline = results.get("full")
    rows = []
    for kind in args.kinds:
        row = {"kind": kind, "T": length}
        if kind not in results:
            rows.append({**row, "train step ms": "failed"})
            continue
        train, infer, peak = results[kind]
        row.update({"train step ms": f"{train * 1e3:.1f}", "inference ms": f"{infer * 1e3:.1f}"})
        if baseline:
            row.update({"train / full": f"{train / baseline[0]:.2f}", "inference / full": f"{infer / baseline[1]:.2f}"})
        if peak is not None:
            row["train peak MiB"] = f"{peak / 2**20:.0f}"
        rows.append(row)
    return rows


def main():
    args = parse_arguments()
    rows = [row for length in args.lengths for row in rows_for_length(length, args)]
    config = SIZES[args.size]()
    settings = (f"Audio ALBERT {args.size} ({config.num_layers} shared layers, hidden {config.hidden_size}, "
                f"{config.num_heads} heads, FFN {config.ffn_size}), float32, B={args.batch}; each kind's default "
                "options; ratios are kind time / full time (below 1 is faster)")
    report("encoder", args, settings, rows)


if __name__ == "__main__":
    main()
