"""fixed_attention on a batch shaped like the paper's speed test (T = 500 frames): its
error against the float64 reference, and its time against the pure-PyTorch path."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from fastattn import ops, reference

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from _timing import median_time  # noqa: E402


def audio_batch(batch, heads, length, dim, device):
    """Learned-looking logits, values, and utterances of different lengths (end padding)."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(heads, length, length, generator=generator)
    v = torch.randn(batch, heads, length, dim, generator=generator)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator)
    mask = torch.arange(length)[None, :] >= lengths[:, None]
    return logits.to(device), v.to(device), mask.to(device)


def max_errors(logits, v, mask):
    """Largest error of the output and both gradients against the float64 reference."""
    grad_out = torch.randn(v.shape, generator=torch.Generator().manual_seed(1)).to(v.device)
    results = []
    for fn, dtype in ((ops.fixed_attention, v.dtype), (reference.fixed_attention, torch.float64)):
        l, x = logits.detach().to(dtype).requires_grad_(), v.detach().to(dtype).requires_grad_()
        out = fn(l, x, key_padding_mask=mask) if fn is ops.fixed_attention else fn(l, x, mask)
        out.backward(grad_out.to(dtype))
        results.append((out, l.grad, x.grad))
    names = ("out", "grad logits", "grad v")
    return {name: (got.double() - want).abs().max().item() for name, got, want in zip(names, *results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8, help="utterances per batch")
    parser.add_argument("--heads", type=int, default=12, help="attention heads")
    parser.add_argument("--length", type=int, default=500, help="frames per utterance (T)")
    parser.add_argument("--dim", type=int, default=64, help="head dimension (D)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    args = parser.parse_args()

    logits, v, mask = audio_batch(args.batch, args.heads, args.length, args.dim, args.device)
    print(f"fixed_attention, B={args.batch} H={args.heads} T={args.length} D={args.dim}, float32 on {args.device}, "
          f"utterances of {mask.logical_not().sum(1).tolist()} frames")
    for name, error in max_errors(logits, v, mask).items():
        print(f"  max |error| of {name:11s} against the float64 reference: {error:.2e}")

    print(f"\n{'':34s}{'fastattn':>10s}{'reference':>11s}{'speed-up':>10s}")
    for label, padding in (("no padding", None), ("padded batch", mask)):
        for stage in ("forward", "forward+backward"):
            times = []
            for fn in (lambda l, x: ops.fixed_attention(l, x, key_padding_mask=padding),
                       lambda l, x: reference.fixed_attention(l, x, padding)):
                l, x = logits.clone().requires_grad_(), v.clone().requires_grad_()
                step = (lambda: fn(l, x)) if stage == "forward" else (lambda: fn(l, x).sum().backward())
                times.append(median_time(step, warmup=1, reps=5))
            print(f"  {label + ', ' + stage:32s}{times[0] * 1e3:8.1f}ms{times[1] * 1e3:9.1f}ms{times[1] / times[0]:9.2f}x")


if __name__ == "__main__":
    main()
