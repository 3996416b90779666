"""fastattn.nn kinds against what they must equal: nn.MultiheadAttention, softmax(R) V by
hand, dense shared-QK attention, the Performer reference, exact softmax attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastattn import masks, reference
from fastattn.nn import SelfAttention
from nn_cases import EMBED, HEADS, LSH_KINDS, attention, inputs, padding


def heads(module, x, block):
    """Block `block` of the packed input projection of x, as (B, H, T, D)."""
    embed = module.embed_dim
    rows = slice(block * embed, (block + 1) * embed)
    projected = F.linear(x, module.in_proj_weight[rows], module.in_proj_bias[rows])
    return projected.unflatten(-1, (module.num_heads, module.head_dim)).transpose(1, 2)


def merge(module, per_head):
    return module.out_proj(per_head.transpose(1, 2).flatten(2))


def test_full_matches_multihead_attention():
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(EMBED, HEADS, batch_first=True).double()
    module = SelfAttention(EMBED, HEADS, "full").double()
    module.load_state_dict(mha.state_dict())
    x, mask = inputs(3, 14, seed=20, dtype=torch.float64), padding(3, 14, seed=20)
    want, want_weights = mha(x, x, x, key_padding_mask=mask, need_weights=True, average_attn_weights=False)
    out, weights = module(x, x, x, key_padding_mask=mask, need_weights=True)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(weights, want_weights)
    torch.testing.assert_close(module(x, key_padding_mask=mask)[0], want)


def test_synth_random_is_softmax_of_its_logits_times_the_values():
    module = attention("synth_random", dtype=torch.float64)
    x = inputs(2, 10, seed=21, dtype=torch.float64)
    probs = torch.softmax(module.mechanism.logits[:, :10, :10], dim=-1)
    torch.testing.assert_close(module(x)[0], merge(module, probs @ heads(module, x, 0)))


@pytest.mark.parametrize("kind", ["synth_dense", "synth_dense_m"])
def test_synth_dense_logits_are_a_two_layer_network_of_each_token(kind):
    module = attention(kind, dtype=torch.float64)
    x = inputs(2, 10, seed=22, dtype=torch.float64)
    q, v = heads(module, x, 0), heads(module, x, 1)
    weight, bias = module.mechanism.weight[..., :10], module.mechanism.bias[..., :10]
    hidden = torch.relu(q) if kind == "synth_dense_m" else torch.relu(q.transpose(1, 2).flatten(2))[:, None]
    probs = torch.softmax(hidden @ weight + bias, dim=-1)
    torch.testing.assert_close(module(x)[0], merge(module, probs @ v))


def shared_qk_by_hand(module, x, mask):
    """Dense attention over keys q_j / ||q_j||, j != i unless nothing else is valid."""
    q, v = heads(module, x, 0), heads(module, x, 1)
    scores = q @ F.normalize(q, dim=-1).transpose(-1, -2) / module.head_dim ** 0.5
    length = x.shape[1]
    allowed = ~mask[:, None, None, :] & ~torch.eye(length, dtype=torch.bool)
    only_self = ~allowed.any(-1, keepdim=True) & ~mask[:, None, None, :] & torch.eye(length, dtype=torch.bool)
    probs = torch.softmax(scores.masked_fill(~(allowed | only_self), float("-inf")), dim=-1)
    return merge(module, probs.nan_to_num() @ v)


def test_shared_qk_matches_by_hand_including_the_only_self_rule():
    module = attention("shared_qk", dtype=torch.float64)
    x = inputs(3, 9, seed=23, dtype=torch.float64)
    mask = padding(3, 9, seed=23)
    mask[2] = True
    mask[2, 4] = False  # item 2: one valid key, which may then attend to itself
    out, weights = module(x, key_padding_mask=mask, need_weights=True)
    torch.testing.assert_close(out, shared_qk_by_hand(module, x, mask))
    assert weights[0].diagonal(dim1=-2, dim2=-1).eq(0).all()
    assert weights[2, :, :, 4].eq(1).all()


@pytest.mark.parametrize("kind", [*LSH_KINDS, "strided", "fixed"])
def test_covering_every_key_equals_dense_shared_qk(kind):
    """An LSH kind with L >= T, or a sparse pattern wider than T, attends to every valid key
    but itself: dense shared-QK attention with the same weights."""
    covering = {"strided": {"stride": 32}, "fixed": {"stride": 32, "summary": 1}}.get(kind, {"L": 32})
    module = attention(kind, dtype=torch.float64, **covering)
    dense = attention("shared_qk", dtype=torch.float64)
    dense.load_state_dict(module.state_dict(), strict=False)
    x, mask = inputs(3, 20, seed=24, dtype=torch.float64), padding(3, 20, seed=24)
    torch.testing.assert_close(module(x, key_padding_mask=mask)[0], dense(x, key_padding_mask=mask)[0])
    torch.testing.assert_close(module(x, key_padding_mask=mask)[0], shared_qk_by_hand(dense, x, mask))


@pytest.mark.parametrize("kind, options", [
    ("local_global", {"window": 32}),
    ("strided", {"stride": 32, "shared_qk": False}),
    ("simple_alsh", {"L": 32, "shared_qk": False}),
])
def test_covering_every_key_without_shared_qk_equals_full(kind, options):
    module = attention(kind, dtype=torch.float64, **options)
    full = attention("full", dtype=torch.float64)
    full.load_state_dict(module.state_dict(), strict=False)
    x, mask = inputs(2, 20, seed=25, dtype=torch.float64), padding(2, 20, seed=25)
    torch.testing.assert_close(module(x, key_padding_mask=mask)[0], full(x, key_padding_mask=mask)[0])


def test_lsh_attends_to_the_most_similar_keys():
    """With few slots, hamming LSH keeps the keys of highest score: its attention output is
    closer to dense shared-QK than a random choice of as many keys."""
    module = attention("simple_lsh", dtype=torch.float64, L=4, n_bits=64)
    x = inputs(2, 24, seed=26, dtype=torch.float64)
    q = heads(module, x, 0)
    scores = q @ F.normalize(q, dim=-1).transpose(-1, -2)
    _, weights = module(x, need_weights=True)
    chosen = weights > 0
    generator = torch.Generator().manual_seed(26)
    random = torch.rand(scores.shape, generator=generator).argsort(-1) < chosen.sum(-1, keepdim=True)
    assert scores[chosen].mean() > scores[random].mean() + 0.2 * scores.std()


def test_performer_matches_its_reference():
    module = attention("performer", dtype=torch.float64)
    x, mask = inputs(3, 16, seed=27, dtype=torch.float64), padding(3, 16, seed=27)
    q, k, v = (heads(module, x, block) for block in range(3))
    want = reference.favor_attention(q, k, v, module.mechanism.features, mask)
    torch.testing.assert_close(module(x, key_padding_mask=mask)[0], merge(module, want))


def test_performer_approximates_softmax_attention():
    """With many features FAVOR+ is close to exact attention (Choromanski et al. 2021)."""
    exact, approximate = attention("full", dtype=torch.float64), attention("performer", dtype=torch.float64,
                                                                           num_features=4096)
    approximate.load_state_dict(exact.state_dict(), strict=False)
    x = inputs(2, 16, seed=28, dtype=torch.float64) * 0.5
    _, want = exact(x, need_weights=True)
    _, got = approximate(x, need_weights=True)
    assert (got - want).abs().max() < 0.1 * want.max()
    assert (got - want).abs().mean() < 0.05 * want.mean()


@pytest.mark.parametrize("global_idx", [(0,), (0, 9, 30)])
def test_local_global_equals_dense_attention_over_its_pattern(global_idx):
    """The module attends from the global queries densely and from the others through
    sparse_attention; together they must be softmax attention restricted to
    masks.local_global's pattern (the global rows list every key), padding included."""
    module = attention("local_global", dtype=torch.float64, window=2, global_idx=global_idx)
    x, mask = inputs(3, 20, seed=26, dtype=torch.float64), padding(3, 20, seed=26)
    mask[2, :] = True  # one item fully padded: zeros
    q, k, v = (heads(module, x, block) for block in range(3))
    pattern = masks.local_global(20, 2, [g for g in global_idx if g < 20])[0, 0]
    allowed = torch.zeros(20, 21, dtype=torch.bool).scatter_(1, torch.where(pattern >= 0, pattern, 20), True)
    allowed = allowed[:, :20] & ~mask[:, None, None, :]
    has_key = allowed.any(-1, keepdim=True)
    scores = (q @ k.transpose(-1, -2) / module.head_dim ** 0.5).masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores.masked_fill(~has_key, 0), dim=-1) * has_key
    out, weights = module(x, key_padding_mask=mask, need_weights=True)
    torch.testing.assert_close(out, merge(module, probs @ v))
    torch.testing.assert_close(weights, probs)
