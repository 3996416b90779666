"""What single kinds promise: LSH projections (redrawn in training, fixed in eval),
Performer's feature redraws, the paper's fixed patterns, sparse patterns with and without
max_len, shared-QK self exclusion in the sparse kinds."""

from __future__ import annotations

import pytest
import torch

from fastattn.nn.fixed_pattern import diagonal_offsets, head_roles, pattern_logits
from nn_cases import LSH_KINDS, attention, inputs, padding


@pytest.mark.parametrize("kind", LSH_KINDS)
def test_lsh_projections_are_redrawn_in_training_and_fixed_in_eval(kind):
    module = attention(kind)
    x = inputs(2, 24, seed=40)
    fixed = module.mechanism.projections.clone()
    assert torch.equal(module(x)[0], module(x)[0])
    module.train()
    torch.manual_seed(1)
    first = module(x, need_weights=True)[1]
    second = module(x, need_weights=True)[1]
    assert not torch.equal(first > 0, second > 0), "training forwards should pick keys with new projections"
    assert torch.equal(module.mechanism.projections, fixed)


@pytest.mark.parametrize("kind", ["strided", *LSH_KINDS])
def test_shared_qk_sparse_kinds_skip_self_unless_alone(kind):
    module = attention(kind, dtype=torch.float64, **({"stride": 16} if kind == "strided" else {}))
    x = inputs(2, 16, seed=41, dtype=torch.float64)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[1, 1:] = True  # item 1: key 0 alone
    _, weights = module(x, key_padding_mask=mask, need_weights=True)
    assert weights[0].diagonal(dim1=-2, dim2=-1).eq(0).all()
    assert weights[1, :, :, 0].eq(1).all()


@pytest.mark.parametrize("kind", ["strided", "fixed", "local_global"])
def test_sparse_pattern_without_max_len_matches_the_cropped_one(kind):
    cropped, built = attention(kind), attention(kind, max_len=None)
    x, mask = inputs(2, 19, seed=42), padding(2, 19, seed=42)
    torch.testing.assert_close(built(x, key_padding_mask=mask, need_weights=True),
                               cropped(x, key_padding_mask=mask, need_weights=True))


def test_strided_weights_follow_the_pattern():
    module = attention("strided", stride=4, shared_qk=False)
    _, weights = module(inputs(1, 20, seed=43), need_weights=True)
    i, j = torch.arange(20)[:, None], torch.arange(20)[None, :]
    assert torch.equal(weights[0, 0] > 0, ((i - j).abs() < 4) | ((i - j) % 4 == 0))


def test_performer_redraws_features_every_interval_in_training_only():
    module = attention("performer", redraw_interval=2)
    x = inputs(1, 8, seed=44)
    start = module.mechanism.features.clone()
    module(x)
    module(x)
    assert torch.equal(module.mechanism.features, start), "eval keeps the features"
    module.train()
    module(x)
    assert torch.equal(module.mechanism.features, start)
    module(x)
    assert not torch.equal(module.mechanism.features, start)


def test_performer_memory_is_linear_in_length():
    """No (T, T) tensor is formed without need_weights: T = 20000 would need 6.4 GB per head."""
    module = attention("performer", max_len=None, num_features=8)
    out, _ = module(inputs(1, 20_000, seed=45))
    assert out.shape == (1, 20_000, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("heads, counts", [(12, (5, 1, 1, 5)), (1, (1, 0, 0, 0)), (2, (1, 0, 0, 1)),
                                           (3, (2, 0, 0, 1)), (4, (1, 1, 1, 1)), (5, (1, 1, 1, 2)),
                                           (6, (2, 1, 1, 2)), (8, (3, 1, 1, 3)), (24, (10, 2, 2, 10))])
def test_fixed_pattern_keeps_the_paper_proportions(heads, counts):
    roles = head_roles(heads)
    assert len(roles) == heads
    assert tuple(roles.count(r) for r in ("diagonal", "increasing", "decreasing", "sparse")) == counts
    assert roles == sorted(roles, key=("diagonal", "increasing", "decreasing", "sparse").index)


@pytest.mark.parametrize("heads", range(4, 33))
def test_fixed_pattern_from_four_heads_averages_both_ways_and_looks_both_ways(heads):
    """At least one increasing and one decreasing head (the heads that average the
    utterance), and diagonal heads whose offsets are symmetric about the diagonal."""
    roles = head_roles(heads)
    assert roles.count("increasing") >= 1 and roles.count("decreasing") >= 1
    offsets = diagonal_offsets(roles.count("diagonal"))
    assert sorted(offsets) == sorted(-offset for offset in offsets) and len(set(offsets)) == len(offsets)


def test_fixed_pattern_heads_of_the_paper():
    logits = pattern_logits(12, 40, peak=8.0, column_period=10)
    probs = torch.softmax(logits, -1)
    assert diagonal_offsets(5) == [-2, -1, 0, 1, 2]
    rows = torch.arange(2, 38)
    for head, offset in enumerate(diagonal_offsets(5)):
        assert torch.equal(probs[head, rows].argmax(-1), rows + offset)
        assert (probs[head, rows, rows + offset] > 0.9).all()
    assert (probs[5].diff(dim=-1) > 0).all() and (probs[6].diff(dim=-1) < 0).all()
    columns = [set(probs[h, 0].topk(4).indices.tolist()) for h in range(7, 12)]
    assert all(c == {p % 10 + 10 * n for n in range(4)} for c, p in zip(columns, [0, 2, 4, 6, 8]))


def test_fixed_pattern_module_starts_from_the_patterns():
    module = attention("fixed_pattern", peak=6.0, column_period=5)
    torch.testing.assert_close(module.mechanism.logits.detach(), pattern_logits(4, 24, peak=6.0, column_period=5))
    assert module.mechanism.logits.requires_grad
    assert not attention("fixed_pattern", trainable=False).mechanism.logits.requires_grad
