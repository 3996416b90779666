"""Predictors of the masked frames that need no model, scored on the masks pre-training draws:
a model that does not beat them has learned no more than averaging or bridging the gap.

- `utterance_mean`: each masked frame predicted by the mean of its utterance's frames that
  the model sees (valid and not masked).
- `interpolation`: a straight line between the nearest seen frames left and right of the
  masked frame (the nearer one alone at an utterance's edge).
"""

from __future__ import annotations

import torch

NAMES = ("utterance_mean", "interpolation")


def predictions(features: torch.Tensor, key_padding_mask: torch.Tensor, chosen: torch.Tensor) -> dict[str, torch.Tensor]:
    """Both predictors' (B, T, F) frames from the uncorrupted features (B, T, F), padding (B, T)
    and the masked frames `chosen` (B, T); they read only frames that are valid and not chosen.
    An utterance with no seen frame is predicted as zeros."""
    seen = ~key_padding_mask & ~chosen
    weights = seen.to(features.dtype)[..., None]
    mean = (features * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1)

    length = features.shape[1]
    positions = torch.arange(length, device=features.device).expand_as(seen)
    # The nearest seen frame at or before each position (-1: none), and at or after (length: none).
    before = torch.where(seen, positions, -1).cummax(1).values
    after = torch.where(seen, positions, length).flip(1).cummin(1).values.flip(1)
    has_before, has_after = before >= 0, after < length
    left = features.gather(1, before.clamp(min=0)[..., None].expand_as(features))
    right = features.gather(1, after.clamp(max=length - 1)[..., None].expand_as(features))
    span = (after - before).clamp(min=1)
    toward_right = torch.where(has_before & has_after, (positions - before) / span, has_after.to(features.dtype))
    line = torch.lerp(left, right, toward_right[..., None].to(features.dtype))
    line = torch.where((has_before | has_after)[..., None], line, mean)
    return {"utterance_mean": mean.expand_as(features), "interpolation": line}
