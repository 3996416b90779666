"""Wall-clock measurement shared by the benchmarks in bench/ and the training package's
report: medians after warm-up, CUDA work timed with events, the machine named for the record,
and the encoder workloads (a training step, an inference pass) that Table 1 times.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import torch
import torch.nn as nn


def median_time(fn: Callable[[], object], *, warmup: int, reps: int, device: str = "cpu") -> float:
    """Median seconds of one call of `fn` over `reps` calls, after `warmup` untimed calls.
    On CUDA only GPU time between two events on the current stream counts."""
    if not (isinstance(reps, int) and reps >= 1 and isinstance(warmup, int) and warmup >= 0):
        raise ValueError(f"median_time needs reps >= 1 and warmup >= 0, got reps={reps!r}, warmup={warmup!r}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        if torch.device(device).type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - begin)
    return statistics.median(samples)


def machine(device: str | torch.device) -> str:
    """What ran a measurement: the GPU's name, or the CPU model, its cores and torch's threads."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def encoder_workloads(model: nn.Module, features: torch.Tensor) -> tuple[Callable[[], None], Callable[[], None]]:
    """(training_step, inference) closures over an encoder taking (B, T, F) features and
    returning an object with `last_hidden_state`, as fastattn.nn.AudioALBERT does.

    training_step: train mode, forward, mean |output| as the loss, backward, an SGD step (a
    fixed, cheap stand-in for the pre-training head and loss, so kinds differ only in their
    attention). inference: eval mode, forward without gradients (feature extraction)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)

    def training_step():
        model.train()
        loss = model(features).last_hidden_state.abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def inference():
        model.eval()
        with torch.no_grad():
            model(features)

    return training_step, inference
