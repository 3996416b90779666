"""Which of the paper's four roles (fastattn.nn.fixed_pattern.ROLES) a head's map plays.

The rule, on a row-stochastic (T, T) map A, in this order:

1. diagonal if the mean over rows of the weight within |i - j| <= 2 is at least
   DIAGONAL_MASS (0.5): the fixed pattern's diagonal heads put ~90% there, a uniform map
   5 / T (0.1 at T = 50), so 0.5 separates them with room for trained, blurred peaks.
2. increasing / decreasing if the column profile p_j = mean_i A[i, j] has a Spearman
   correlation with the key index j of at least TREND (0.8) in size. The trend is tested
   before concentration because a 1 / (j + 1) profile is also concentrated (its first 5%
   of columns hold ~50% of the weight), whereas a few spikes over a flat or noisy floor
   have a rank correlation near 0.
3. sparse if the top 5% of columns (at least one) hold at least SPARSE_MASS (0.3) of the
   profile: 6x what a uniform map gives them.
4. otherwise (no clear structure) the sign of the weak trend: the four roles are all
   the fixed pattern can initialise, so every head gets one.

Meant for T well above 10 (at T = 10 a uniform map already has 0.5 near the diagonal).
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from fastattn.nn.fixed_pattern import ROLES

DIAGONAL_MASS = 0.5
TREND = 0.8
SPARSE_MASS = 0.3
NEAR_DIAGONAL = 2  # |i - j| counted as "on the diagonal": the paper's offsets -2..2
TOP_COLUMNS = 0.05


def head_statistics(attention_map: torch.Tensor) -> dict[str, float]:
    """The three statistics the rule reads: diagonal_mass, trend (Spearman) and top_column_mass."""
    if not (isinstance(attention_map, torch.Tensor) and attention_map.dim() == 2
            and attention_map.shape[0] == attention_map.shape[1] and attention_map.shape[0] >= 2):
        got = tuple(attention_map.shape) if isinstance(attention_map, torch.Tensor) else type(attention_map)
        raise ValueError(f"attention_map must be a square (T, T) tensor with T >= 2, got {got}")
    weights = attention_map.double()
    length = weights.shape[0]
    index = torch.arange(length)
    near = (index[:, None] - index[None, :]).abs() <= NEAR_DIAGONAL
    profile = weights.mean(0)
    profile = profile / profile.sum()
    top = max(1, math.ceil(TOP_COLUMNS * length))
    return {
        "diagonal_mass": float((weights * near).sum(1).mean()),
        "trend": _spearman_with_index(profile),
        "top_column_mass": float(profile.topk(top).values.sum()),
    }


def classify_head(attention_map: torch.Tensor) -> str:
    """One of ROLES for a row-stochastic (T, T) map, by the rule in this module's docstring."""
    stats = head_statistics(attention_map)
    if stats["diagonal_mass"] >= DIAGONAL_MASS:
        return "diagonal"
    if abs(stats["trend"]) < TREND and stats["top_column_mass"] >= SPARSE_MASS:
        return "sparse"  # no clear trend but a few heavy columns
    # a clear trend, or no structure at all: the sign of the trend
    return "increasing" if stats["trend"] >= 0 else "decreasing"


def classify_heads(maps_per_head) -> list[str]:
    """The majority role of each head over its maps (one list of (T, T) maps per head, e.g.
    collect_maps(...).values()); a tie goes to the role earlier in ROLES."""
    roles = []
    for head, maps in enumerate(maps_per_head):
        votes = Counter(classify_head(m) for m in maps)
        if not votes:
            raise ValueError(f"maps_per_head[{head}] holds no map")
        roles.append(max(ROLES, key=lambda role: (votes[role], -ROLES.index(role))))
    return roles


def _spearman_with_index(profile: torch.Tensor) -> float:
    """Spearman correlation of `profile` with 0..T-1, ties ranked by their average (an
    ordinal rank would turn a flat floor into a perfect trend). Values are rounded to 1e-9
    of the largest first, so float noise does not break ties; a flat profile gives 0."""
    values = torch.round(profile / profile.max() * 1e9)
    _, group, counts = torch.unique(values, return_inverse=True, return_counts=True)
    average_rank = (counts.cumsum(0) - (counts - 1) / 2.0).double()[group]
    index = torch.arange(len(profile), dtype=torch.float64)
    ranks, index = average_rank - average_rank.mean(), index - index.mean()
    spread = ranks.norm() * index.norm()
    return float((ranks @ index) / spread) if spread > 0 else 0.0
