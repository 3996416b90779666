"""fastattn_train.trivial_predictors against hand computations."""

from __future__ import annotations

import torch

from fastattn_train import trivial_predictors


def test_a_ramp_is_bridged_exactly_and_the_mean_reads_seen_frames_only():
    # one utterance: frame t = (t, 10 t); frames 3..5 masked, 8..9 padding
    features = torch.stack([torch.arange(10.0), 10 * torch.arange(10.0)], dim=1)[None]
    padding = torch.zeros(1, 10, dtype=torch.bool)
    padding[0, 8:] = True
    features[0, 8:] = 1000.0  # padding must never be read
    chosen = torch.zeros(1, 10, dtype=torch.bool)
    chosen[0, 3:6] = True
    got = trivial_predictors.predictions(features, padding, chosen)
    torch.testing.assert_close(got["interpolation"][0, 3:6], features[0, 3:6])
    seen = torch.tensor([0, 1, 2, 6, 7])
    torch.testing.assert_close(got["utterance_mean"][0, 4], features[0, seen].mean(0))


def test_edges_copy_the_nearest_seen_frame_and_an_unseen_utterance_gets_zeros():
    features = torch.randn(2, 6, 3)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[0, 5] = True
    chosen = torch.zeros(2, 6, dtype=torch.bool)
    chosen[0, :2] = True  # masked at the start: the first seen frame is 2
    chosen[0, 4] = True   # masked before padding: the last seen frame is 3
    chosen[1] = True      # nothing seen
    got = trivial_predictors.predictions(features, padding, chosen)["interpolation"]
    torch.testing.assert_close(got[0, :2], features[0, 2].expand(2, 3))
    torch.testing.assert_close(got[0, 4], features[0, 3])
    assert got[1].eq(0).all()

