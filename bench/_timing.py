"""Timing and reporting helpers shared by the benchmarks in bench/.

Times are medians over repetitions after warm-up; CUDA work is timed with events on the
current stream, so only GPU time between the two events counts.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from typing import Callable

import torch


def median_time(fn: Callable[[], object], *, warmup: int, reps: int, device: str = "cpu") -> float:
    """Median seconds of one call of `fn` over `reps` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        if device == "cuda":
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


def machine(device: str) -> str:
    """What ran the benchmark, for the record."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def header(title: str, device: str, settings: str) -> str:
    today = datetime.date.today().isoformat()
    return f"{title}: {today}, {machine(device)}, torch {torch.__version__}; {settings}\n"


def markdown_table(rows: list[dict[str, object]]) -> str:
    """Every column any row has, in first-seen order; "-" where a row lacks one."""
    columns = list(dict.fromkeys(column for row in rows for column in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "-")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
