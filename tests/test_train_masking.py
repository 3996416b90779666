"""fastattn_train.masking: spans of 7 covering 15% of the valid frames, the 80/10/10 rule
per utterance, padding never touched, reproducible from the generator."""

from __future__ import annotations

import pytest
import torch

from fastattn_train.masking import MaskingConfig, mask_frames, span_starts


def padded_batch(seed: int, batch: int = 64, longest: int = 120, width: int = 5):
    """Distinct nonzero frames (so a replaced frame is recognisable), padding at the end."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, longest + 1, (batch,), generator=generator)
    lengths[0] = longest
    features = 1.0 + torch.rand(batch, longest, width, generator=generator)
    return features, torch.arange(longest)[None] >= lengths[:, None], lengths


def runs(row: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-d bool tensor."""
    padded = torch.cat([torch.tensor([False]), row, torch.tensor([False])]).int()
    edges = padded.diff().nonzero().squeeze(1)
    return (edges[1::2] - edges[0::2]).tolist()


def test_spans_of_seven_cover_fifteen_percent_of_valid_frames_only():
    features, padding, lengths = padded_batch(0, batch=400)
    _, chosen = mask_frames(features, padding, torch.Generator().manual_seed(1))
    assert not chosen[padding].any()
    for b in range(len(lengths)):
        length, covered = int(lengths[b]), int(chosen[b].sum())
        if length < 7:
            assert covered == 0
            continue
        spans = max(1, round(0.15 * length / 7))
        assert covered == 7 * spans  # the spans never overlap
        assert all(run % 7 == 0 for run in runs(chosen[b]))  # adjacent spans merge into a run of 14, ...
    long = lengths >= 70  # where rounding to whole spans is a small error
    fraction = chosen[long].sum() / lengths[long].sum()
    assert abs(fraction - 0.15) < 0.01, fraction


def test_span_positions_are_uniform_over_the_utterance():
    generator = torch.Generator().manual_seed(2)
    hits = torch.zeros(100)
    for _ in range(3000):
        for start in span_starts(100, 7, 0.15, generator):
            hits[start:start + 7] += 1
    # every frame is covered with probability 0.14 up to edge effects of a few frames
    assert (hits[10:90] / 3000 - 0.14).abs().max() < 0.03, hits


def test_zero_random_keep_rule_holds_per_utterance():
    features, padding, lengths = padded_batch(3, batch=3000, longest=60)
    corrupted, chosen = mask_frames(features, padding, torch.Generator().manual_seed(4))
    assert torch.equal(corrupted[~chosen], features[~chosen])  # nothing outside the chosen frames changes
    counts = {"zero": 0, "random": 0, "keep": 0}
    for b in torch.nonzero(chosen.any(1)).squeeze(1).tolist():
        before, after = features[b][chosen[b]], corrupted[b][chosen[b]]
        if (after == 0).all():
            counts["zero"] += 1
        elif torch.equal(after, before):
            counts["keep"] += 1
        else:
            counts["random"] += 1
            valid = features[b][~padding[b]]
            # every replacement is one of the utterance's own valid frames
            assert ((after[:, None] == valid[None]).all(-1)).any(1).all()
    total = sum(counts.values())
    assert abs(counts["zero"] / total - 0.8) < 0.03 and abs(counts["random"] / total - 0.1) < 0.02, counts


def test_padding_is_never_chosen_nor_changed_wherever_it_is():
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(50, 40, 3, generator=generator)
    padding = torch.rand(50, 40, generator=generator) < 0.4  # padding in the middle too
    corrupted, chosen = mask_frames(features, padding, generator)
    assert not chosen[padding].any()
    assert torch.equal(corrupted[padding], features[padding])
    assert chosen.any()


def test_the_generator_makes_it_reproducible():
    features, padding, _ = padded_batch(6)
    first = mask_frames(features, padding, torch.Generator().manual_seed(7))
    second = mask_frames(features, padding, torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[1], mask_frames(features, padding, torch.Generator().manual_seed(8))[1])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="zero_prob"):
        MaskingConfig(zero_prob=0.95, random_prob=0.1)
    with pytest.raises(ValueError, match="key_padding_mask"):
        mask_frames(torch.zeros(2, 5, 3), torch.zeros(2, 4, dtype=torch.bool), torch.Generator())
