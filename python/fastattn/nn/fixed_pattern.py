"""The paper's "Ours" (its Fig. 2a and 4): a Random Synthesizer whose logits start as the
four kinds of pattern that the heads of a trained audio transformer show. Of 12 heads:
5 diagonal (a peak at key i + offset, offsets -2..2), 1 increasing (weight grows with the
key index), 1 decreasing, 5 sparse (a few fixed key columns); other head counts keep those
proportions, in that order, with at least one increasing and one decreasing head from 4
heads on (`head_roles`)."""

from __future__ import annotations

import torch

from fastattn.nn.synthesizer import RandomSynthesizer

ROLES = ("diagonal", "increasing", "decreasing", "sparse")
_PAPER_COUNTS = (5, 1, 1, 5)  # of 12 heads, in the order of ROLES


def head_roles(num_heads: int) -> list[str]:
    """The role of each head, in the order of ROLES: the paper's 5:1:1:5 split of 12
    heads apportioned to `num_heads` by largest remainder (ties to the larger paper
    group, then the earlier role). From 4 heads on, at least one increasing and one
    decreasing head: the only roles that average the whole utterance, which largest
    remainder alone would drop below 8 heads; each takes a head from the larger of the
    diagonal and sparse groups (the diagonal one on a tie). So 1 head is diagonal, 4 heads
    are one of each, 6 heads are 2, 1, 1, 2, 8 heads are 3, 1, 1, 3."""
    quotas = [num_heads * count / sum(_PAPER_COUNTS) for count in _PAPER_COUNTS]
    counts = [int(quota) for quota in quotas]
    by_remainder = sorted(range(len(ROLES)), key=lambda r: (counts[r] - quotas[r], -_PAPER_COUNTS[r], r))
    for r in by_remainder[: num_heads - sum(counts)]:
        counts[r] += 1
    diagonal, increasing, decreasing, sparse = range(len(ROLES))
    if num_heads >= 4:
        for averaging in (increasing, decreasing):
            if counts[averaging] == 0:
                counts[diagonal if counts[diagonal] >= counts[sparse] else sparse] -= 1
                counts[averaging] = 1
    return [role for role, count in zip(ROLES, counts) for _ in range(count)]


def diagonal_offsets(count: int) -> list[int]:
    """Offsets for `count` diagonal heads, symmetric about the diagonal and nearest it
    first: -2..2 for 5, [-1, 1] for 2 (an even count leaves out offset 0, so that every
    head looking left has a twin looking right), [0] for 1."""
    if count % 2:
        return list(range(-(count // 2), count // 2 + 1))
    return list(range(-(count // 2), 0)) + list(range(1, count // 2 + 1))


def pattern_logits(num_heads: int, max_len: int, *, peak: float = 8.0, column_period: int = 100) -> torch.Tensor:
    """(H, max_len, max_len) float32 logits, one pattern per head (roles from `head_roles`)."""
    return write_patterns(torch.empty(num_heads, max_len, max_len), peak=peak, column_period=column_period)


@torch.no_grad()
def write_patterns(logits: torch.Tensor, *, peak: float, column_period: int,
                   roles: list[str] | None = None) -> torch.Tensor:
    """Fill (H, N, N) `logits` in place, head by head (no second (H, N, N) copy), head h with
    the pattern of roles[h] (default `head_roles(H)`, the paper's split; the attention-map
    analysis passes the roles it found in a trained model):

    - diagonal: `peak` at key j = i + offset, 0 elsewhere;
    - increasing: log(j + 1), so the weights grow in proportion to j + 1;
    - decreasing: -log(j + 1), weights in proportion to 1 / (j + 1);
    - sparse: `peak` on the key columns j = phase (mod column_period), the sparse heads'
      phases spread evenly over the period, 0 elsewhere.

    Each depends on i and j only, so a crop to T < N keeps its shape.
    """
    roles = head_roles(logits.shape[0]) if roles is None else list(roles)
    length = logits.shape[1]
    i = torch.arange(length, device=logits.device)[:, None]
    j = torch.arange(length, device=logits.device)[None, :]
    offsets = iter(diagonal_offsets(roles.count("diagonal")))
    sparse_heads = roles.count("sparse")
    phases = iter(s * column_period // sparse_heads for s in range(sparse_heads))
    for head, role in zip(logits, roles):
        if role == "diagonal":
            head.copy_(peak * (j == i + next(offsets)))
        elif role == "sparse":
            head.copy_(peak * ((j - next(phases)) % column_period == 0))
        else:
            head.copy_((1.0 if role == "increasing" else -1.0) * torch.log1p(j.double()))
    return logits


class FixedPatternSynthesizer(RandomSynthesizer):
    """Ours: `synth_random` initialised with `pattern_logits`.

    Options:
        trainable: learn the logits from that start (default True, as the paper trains).
        peak: logit of a diagonal or column peak (default 8: at T = 500 a diagonal head
            puts e^8 / (e^8 + 499) = 86% of a row's weight on its peak).
        column_period: frames between the key columns of a sparse head (default 100, one
            second: 5 columns at T = 500).
    """

    def __init__(self, num_heads: int, head_dim: int, max_len: int, *, trainable: bool = True,
                 peak: float = 8.0, column_period: int = 100):
        super().__init__(num_heads, head_dim, max_len, trainable=trainable)
        if not (isinstance(column_period, int) and column_period >= 1):
            raise ValueError(f"column_period must be a positive integer, got {column_period!r}")
        write_patterns(self.logits, peak=float(peak), column_period=column_period)
