"""A fixed_pattern initialisation from the roles the analysis found: (H, max_len, max_len)
logits to save, load and copy into a model's Random Synthesizer attentions."""

from __future__ import annotations

import torch
import torch.nn as nn

from fastattn.nn.fixed_pattern import ROLES, write_patterns
from fastattn.nn.synthesizer import RandomSynthesizer


def fixed_pattern_initialisation(roles: list[str], max_len: int, *, peak: float = 8.0,
                                 column_period: int = 100) -> torch.Tensor:
    """(len(roles), max_len, max_len) float32 logits, head h following roles[h] (any order
    and counts), drawn by fastattn.nn.fixed_pattern.write_patterns."""
    roles = list(roles)
    if not roles or not set(roles) <= set(ROLES):
        raise ValueError(f"roles must be a non-empty list of {ROLES}, got {roles!r}")
    if not (isinstance(max_len, int) and max_len >= 1):
        raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
    if not (isinstance(column_period, int) and column_period >= 1):
        raise ValueError(f"column_period must be a positive integer, got {column_period!r}")
    return write_patterns(torch.empty(len(roles), max_len, max_len), peak=peak, column_period=column_period,
                          roles=roles)


def save_initialisation(logits: torch.Tensor, path) -> None:
    """Writes (H, N, N) `logits` to `path` with torch.save."""
    _check_logits(logits, "logits")
    torch.save(logits.detach().cpu().contiguous(), path)


def load_initialisation(path) -> torch.Tensor:
    """The (H, N, N) logits saved by save_initialisation (loaded with weights_only=True)."""
    logits = torch.load(path, map_location="cpu", weights_only=True)
    _check_logits(logits, f"the tensor in {path}")
    return logits


@torch.no_grad()
def apply_initialisation(model: nn.Module, logits: torch.Tensor) -> int:
    """Copies `logits` into every Random Synthesizer attention of `model` (the fixed_pattern
    kind, and synth_random, which differs only in its start); returns how many it wrote."""
    _check_logits(logits, "logits")
    targets = [m for m in model.modules() if isinstance(m, RandomSynthesizer)]
    if not targets:
        raise ValueError("model has no fixed_pattern or synth_random attention to initialise")
    for target in targets:
        if target.logits.shape != logits.shape:
            raise ValueError(f"logits must match the model's (heads, max_len, max_len) = "
                             f"{tuple(target.logits.shape)}, got {tuple(logits.shape)}")
        target.logits.copy_(logits)
    return len(targets)


def _check_logits(logits, name: str) -> None:
    if not (isinstance(logits, torch.Tensor) and logits.dim() == 3 and logits.shape[1] == logits.shape[2]):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        raise ValueError(f"{name} must be a (heads, max_len, max_len) tensor, got {got}")
