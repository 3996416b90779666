"""A report's pre-training runs in several processes at once, for CPUs.

A tiny encoder's training step leaves 2 cores partly idle. On a 2-core AMD EPYC virtual
machine two `tiny` runs side by side, one thread each, trained 5,400 and 5,900 frames/s
against 10,000 for one run alone on both threads (1.13 times as much in all); in the main job
an hour earlier the two trained 9,100 and 10,200 each, nearly twice. The gain depends on how
the host places the two virtual cores; it never measured below 1. Each process trains whole
runs, writing checkpoints and logs into the report folder as a run alone would; the report
then finds them finished. A run is the same computation on any number of threads but for the
order of floating-point sums.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import torch


def default_jobs(device: str, runs: int) -> int:
    """Processes for `runs` pre-training runs: one on a GPU (it is shared, not split), else one
    per torch thread up to the number of runs."""
    return 1 if device == "cuda" else max(1, min(runs, torch.get_num_threads()))


def pretrain_all(jobs: int, runs: list[tuple[str, int]], run_one) -> None:
    """Calls run_one(kind, seed, threads) for every (kind, seed) of `runs` in `jobs` processes;
    `threads`, an equal share of this process's torch threads, is for run_one to set. `run_one`
    must be picklable (a module-level function or a functools.partial of one): it runs in a
    fresh interpreter.
    Raises the first failure after the other runs end."""
    threads = max(1, torch.get_num_threads() // jobs)
    # spawn: a forked child would inherit torch's thread pools and any lock another thread held.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_one, kind, seed, threads) for kind, seed in runs]
    for future in futures:
        future.result()

