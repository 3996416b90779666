"""Checkpoint plumbing: atomic writes, and the random number generator states a run must
restore to continue bit for bit where it stopped."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def write_atomically(path: str | os.PathLike, write) -> None:
    """Calls write(file) on `path`.tmp, syncs it to disk, then renames it over `path`.

    A crash at any point leaves either the previous file or the new one at `path`, never a
    partial one; a stale .tmp left by a crash is truncated by the next write and never read.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def save_checkpoint(checkpoint: dict, path: str | os.PathLike) -> None:
    write_atomically(path, lambda file: torch.save(checkpoint, file))


def load_checkpoint(path: str | os.PathLike) -> dict:
    # weights_only: a checkpoint holds tensors and plain Python values only, so loading
    # one never runs code from the file.
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state(masking_generator: torch.Generator, device: torch.device) -> dict:
    """Every generator a training step draws from: torch (dropout), CUDA, numpy and Python
    random (datasets may use them), and the masking generator."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # as a tensor and plain numbers, which a weights_only load accepts
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
        "masking": masking_generator.get_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict, masking_generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    masking_generator.set_state(state["masking"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
