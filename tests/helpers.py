"""What the op tests share: devices, padding patterns, and a tolerance rule."""

from __future__ import annotations

import pytest
import torch
from hypothesis import strategies as st

import fastattn

CUDA_READY = fastattn.built_with_cuda and torch.cuda.is_available()
_NO_CUDA = "needs a CUDA GPU and a fastattn build with CUDA kernels"

DEVICES = [
    pytest.param("cpu"),
    pytest.param("cuda", marks=pytest.mark.skipif(not CUDA_READY, reason=_NO_CUDA)),
]
# dtypes each device computes in; float64 stands for "the reference itself" on the CPU
DEVICE_DTYPES = [
    pytest.param("cpu", torch.float32),
    pytest.param("cpu", torch.float64),
    *[
        pytest.param("cuda", dtype, marks=pytest.mark.skipif(not CUDA_READY, reason=_NO_CUDA))
        for dtype in (torch.float32, torch.float16, torch.bfloat16)
    ],
]
requires_cuda = pytest.mark.skipif(not CUDA_READY, reason=_NO_CUDA)

PADDINGS = ("none", "end", "middle", "everywhere", "random")


def padding_mask(kind: str, batch: int, length: int, generator: torch.Generator) -> torch.Tensor | None:
    """(B, T) bool key padding (True = padding) of a named pattern; None for "none".

    Item 0 always keeps every key, so each pattern also mixes padded and unpadded items.
    """
    if kind == "none":
        return None
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for b in range(1, batch):
        if kind == "end":
            keep = int(torch.randint(0, length + 1, (1,), generator=generator))
            mask[b, keep:] = True
        elif kind == "middle":
            start = int(torch.randint(0, length, (1,), generator=generator))
            stop = int(torch.randint(start, length + 1, (1,), generator=generator))
            mask[b, start:stop] = True
        elif kind == "everywhere":
            mask[b] = True
        elif kind == "random":
            mask[b] = torch.rand(length, generator=generator) < 0.5
        else:
            raise ValueError(f"unknown padding kind {kind!r}")
    return mask


def assert_close_to_reference(name: str, got: torch.Tensor, want64: torch.Tensor, same_math: torch.Tensor) -> None:
    """FlashAttention's rule: `got`'s error against the float64 truth `want64` may be at most
    twice the error of the same math done in plain PyTorch at got's dtype (`same_math`),
    plus a slack for rounding relative to the largest value (dot products of length D
    and cancellation in the softmax gradient lose a few float32 ulps)."""
    got64, same64 = got.double().cpu(), same_math.double().cpu()
    want64 = want64.cpu()
    error = (got64 - want64).abs().max().item() if got.numel() else 0.0
    baseline = (same64 - want64).abs().max().item() if got.numel() else 0.0
    magnitude = max(1.0, want64.abs().max().item()) if got.numel() else 1.0
    slack = magnitude * {torch.float64: 1e-12, torch.float32: 1e-5}.get(got.dtype, 1e-3)
    assert error <= 2 * baseline + slack, f"{name}: max error {error:.3e}, PyTorch at {got.dtype} {baseline:.3e}"



def key_padding_masks(batch: int, length: int) -> st.SearchStrategy[torch.Tensor | None]:
    """key_padding_mask arguments: None, or a (B, T) mask whose items draw their patterns
    independently: any subset, one run anywhere, no padding (all items: an all-false mask)
    or every key. Unlike `padding_mask`, item 0 (and so B = 1) gets padded too.

    Choices are named (sampled_from) and subsets come from a seed, because hypothesis
    favours its simplest values (None, all-false lists, empty runs): drawn as plain
    booleans, masks that pad some keys of an item but not all were rare in a few dozen
    examples. They still come in clumps, so pin a case that must run with @example."""
    keys = range(length)
    run = st.integers(0, max(length - 1, 0)).flatmap(  # never empty
        lambda start: st.integers(start + 1, max(length, start + 1)).map(
            lambda stop: [start <= t < stop for t in keys]))
    subset = st.integers(0, 2**32 - 1).map(
        lambda seed: (torch.rand(length, generator=torch.Generator().manual_seed(seed)) < 0.5).tolist())
    patterns = {"subset": subset, "run": run, "keep": st.just([False] * length), "all": st.just([True] * length)}
    item = st.sampled_from(list(patterns)).flatmap(patterns.get)
    mask = st.lists(item, min_size=batch, max_size=batch).map(
        lambda rows: torch.tensor(rows, dtype=torch.bool).reshape(batch, length))
    return st.sampled_from(["mask", None]).flatmap(lambda kind: mask if kind else st.none())
