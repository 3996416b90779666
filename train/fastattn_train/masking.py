"""The masked acoustic model's input corruption (Mockingjay, Audio ALBERT; SPEC section 7).

Per utterance: spans of `span` consecutive valid frames covering `fraction` of its valid
frames are chosen; then, with probability `zero_prob` the chosen frames are set to zero,
with probability `random_prob` each is replaced by a random valid frame of the same
utterance, and otherwise they are left as they are. The model reconstructs the original
frames and the loss reads the chosen frames only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MaskingConfig:
    """The corruption's parameters; the defaults are Mockingjay's and Audio ALBERT's."""

    span: int = 7  # consecutive frames per masked span
    fraction: float = 0.15  # of each utterance's valid frames
    zero_prob: float = 0.8  # per utterance: zero the chosen frames
    random_prob: float = 0.1  # per utterance: replace them with random frames (else leave them)

    def __post_init__(self):
        if not (isinstance(self.span, int) and self.span >= 1):
            raise ValueError(f"masking span must be a positive integer, got {self.span!r}")
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"masking fraction must be in (0, 1), got {self.fraction!r}")
        if not (0.0 <= self.zero_prob and 0.0 <= self.random_prob and self.zero_prob + self.random_prob <= 1.0):
            raise ValueError(f"masking zero_prob ({self.zero_prob}) and random_prob ({self.random_prob}) must be "
                             f"non-negative and sum to at most 1")


def span_starts(valid_frames: int, span: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Start positions (sorted) of round(fraction * valid_frames / span) spans, at least one,
    that do not overlap and lie inside the utterance, drawn uniformly over all such
    placements. An utterance shorter than one span gets none: there would be no context
    left to reconstruct it from."""
    if valid_frames < span:
        return torch.zeros(0, dtype=torch.long)
    count = max(1, round(fraction * valid_frames / span))
    # k non-overlapping spans of length s in L frames correspond one to one to k distinct
    # slots out of L - k (s - 1): sort the slots and push the i-th one right by i (s - 1).
    slots = torch.randperm(valid_frames - count * (span - 1), generator=generator)[:count].sort().values
    return slots + torch.arange(count) * (span - 1)


def mask_frames(features: torch.Tensor, key_padding_mask: torch.Tensor | None, generator: torch.Generator,
                config: MaskingConfig = MaskingConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupts a padded batch for the masked acoustic model.

    Args:
        features: (B, T, F) frames on the CPU (the generator is a CPU one; move the
            results to the device afterwards).
        key_padding_mask: (B, T) bool, True = padding, or None (no padding). Padding frames
            are never chosen, and random replacements come from valid frames only.
        generator: drives every draw, so a run is reproducible and resumable from its state.

    Returns:
        (corrupted features (B, T, F), chosen (B, T) bool: the frames the loss reads).
    """
    if not (isinstance(features, torch.Tensor) and features.dim() == 3):
        raise ValueError(f"features must be a (B, T, F) tensor, got {getattr(features, 'shape', type(features))}")
    batch, length, _ = features.shape
    if key_padding_mask is None:
        key_padding_mask = torch.zeros(batch, length, dtype=torch.bool)
    if key_padding_mask.shape != (batch, length) or key_padding_mask.dtype != torch.bool:
        raise ValueError(f"key_padding_mask must be a bool (B, T) = ({batch}, {length}) tensor, got "
                         f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
    corrupted = features.clone()
    chosen = torch.zeros(batch, length, dtype=torch.bool)
    action = torch.rand(batch, generator=generator)  # one draw per utterance: zero, random or keep
    for b in range(batch):
        valid = (~key_padding_mask[b]).nonzero().squeeze(1)  # positions of the valid frames
        starts = span_starts(len(valid), config.span, config.fraction, generator)
        if len(starts) == 0:
            continue
        positions = valid[(starts[:, None] + torch.arange(config.span)).flatten()]
        chosen[b, positions] = True
        if action[b] < config.zero_prob:
            corrupted[b, positions] = 0.0
        elif action[b] < config.zero_prob + config.random_prob:
            donors = valid[torch.randint(len(valid), (len(positions),), generator=generator)]
            corrupted[b, positions] = features[b, donors]
    return corrupted, chosen
