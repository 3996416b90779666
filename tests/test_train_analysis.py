"""fastattn_train.analysis: the head classifier recovers maps of known role (and the fixed
pattern's own heads), collect_maps crops each utterance's maps, the exported
initialisation loads into fixed_pattern attentions, and the t-SNE plot is written."""

from __future__ import annotations

import pytest
import torch

from fastattn.nn import AudioALBERT, AudioALBERTConfig, SelfAttention
from fastattn.nn.fixed_pattern import head_roles, pattern_logits
from fastattn_train.analysis import (apply_initialisation, classify_head, classify_heads, collect_maps, embed_maps,
                                     fixed_pattern_initialisation, load_initialisation, plot_embedding,
                                     save_initialisation)
from fastattn_train.dataset import collate

LENGTHS = (50, 120, 300)


def noisy_map(logits: torch.Tensor, noise: float, seed: int) -> torch.Tensor:
    """softmax over keys of `logits` plus Gaussian noise: a row-stochastic (T, T) map."""
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(logits + noise * torch.randn(logits.shape, generator=generator), dim=-1)


def synthetic_logits(role: str, length: int, *, offset: int = 0, columns=(0,)) -> torch.Tensor:
    i = torch.arange(length)[:, None].float()
    j = torch.arange(length)[None, :].float()
    if role == "diagonal":
        return 6.0 * (j == i + offset)
    if role == "sparse":
        return 6.0 * torch.isin(j, torch.tensor(columns, dtype=torch.float32)).float().expand(length, length)
    sign = 1.0 if role == "increasing" else -1.0
    return (sign * torch.log1p(j)).expand(length, length)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("offset", [-2, -1, 0, 1, 2])
def test_diagonal_maps_at_every_offset(length, offset):
    assert classify_head(noisy_map(synthetic_logits("diagonal", length, offset=offset), 0.5, offset)) == "diagonal"


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("role", ["increasing", "decreasing"])
def test_monotone_maps(length, role):
    assert classify_head(noisy_map(synthetic_logits(role, length), 0.5, length)) == role


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("columns", [(0,), (3, 40), (10, 25, 45)])
def test_sparse_column_maps(length, columns):
    attention_map = noisy_map(synthetic_logits("sparse", length, columns=columns), 0.5, len(columns))
    assert classify_head(attention_map) == "sparse"


def test_majority_vote_over_utterances():
    diagonal = [noisy_map(synthetic_logits("diagonal", t), 0.5, t) for t in LENGTHS]
    sparse = [noisy_map(synthetic_logits("sparse", t, columns=(5, 30)), 0.5, t) for t in LENGTHS]
    increasing = noisy_map(synthetic_logits("increasing", 80), 0.5, 0)
    assert classify_heads([diagonal[:2] + sparse[:1], sparse + [increasing, increasing]]) == ["diagonal", "sparse"]
    # a 1-1 tie goes to the role listed first in fixed_pattern.ROLES
    assert classify_heads([[sparse[0], diagonal[0]]]) == ["diagonal"]


@pytest.mark.parametrize("length", [120, 300])
def test_fixed_pattern_heads_classify_as_their_paper_roles(length):
    maps = torch.softmax(pattern_logits(12, length), dim=-1)
    assert [classify_head(m) for m in maps] == head_roles(12) == ["diagonal"] * 5 + ["increasing", "decreasing"] + [
        "sparse"] * 5


def test_classify_head_names_a_bad_map():
    with pytest.raises(ValueError, match="attention_map"):
        classify_head(torch.ones(3, 4))


def test_initialisation_with_free_roles_matches_the_paper_pattern_for_paper_roles(tmp_path):
    assert torch.equal(fixed_pattern_initialisation(head_roles(12), 150), pattern_logits(12, 150))
    roles = ["sparse", "diagonal", "decreasing", "diagonal"]
    logits = fixed_pattern_initialisation(roles, 150)
    assert [classify_head(m) for m in torch.softmax(logits, -1)] == roles
    save_initialisation(logits, tmp_path / "init.pt")
    assert torch.equal(load_initialisation(tmp_path / "init.pt"), logits)


def test_initialisation_loads_into_self_attention_and_audio_albert(tmp_path):
    logits = fixed_pattern_initialisation(["diagonal", "increasing", "decreasing", "sparse"], 64)
    save_initialisation(logits, tmp_path / "init.pt")
    loaded = load_initialisation(tmp_path / "init.pt")
    attention = SelfAttention(32, 4, kind="fixed_pattern", max_len=64)
    assert apply_initialisation(attention, loaded) == 1
    assert torch.equal(attention.mechanism.logits, logits)
    model = AudioALBERT(AudioALBERTConfig.tiny(attention="fixed_pattern", max_len=64, share_layers=False))
    assert apply_initialisation(model, loaded) == 2
    assert all(torch.equal(layer.self_attn.mechanism.logits, logits) for layer in model.encoder.layers)
    with pytest.raises(ValueError, match="logits must match"):
        apply_initialisation(model, logits[:, :32, :32])
    with pytest.raises(ValueError, match="no fixed_pattern"):
        apply_initialisation(AudioALBERT(AudioALBERTConfig.tiny()), logits)


def test_initialisation_names_bad_roles():
    with pytest.raises(ValueError, match="roles"):
        fixed_pattern_initialisation(["diagonal", "stripes"], 16)


def tiny_dataset(lengths):
    generator = torch.Generator().manual_seed(0)
    return [{"id": f"u{n}", "features": torch.randn(t, 80, generator=generator), "speaker": 0, "phones": None}
            for n, t in enumerate(lengths)]


def test_collect_maps_crops_each_utterance_and_keeps_rows_stochastic():
    torch.manual_seed(0)
    model = AudioALBERT(AudioALBERTConfig.tiny(attention="full"))
    model.train()
    lengths = [17, 30, 9, 25, 40]
    maps = collect_maps(model, tiny_dataset(lengths), collate, utterances=4, batch_size=3)
    assert model.training  # the caller's mode comes back
    assert list(maps) == [(layer, head) for layer in range(2) for head in range(4)]
    for per_utterance in maps.values():
        assert [m.shape for m in per_utterance] == [(t, t) for t in lengths[:4]]
        for m in per_utterance:
            torch.testing.assert_close(m.sum(-1), torch.ones(len(m)))
    only_last = collect_maps(model, tiny_dataset(lengths), collate, utterances=2, layer=1)
    assert list(only_last) == [(1, head) for head in range(4)]
    torch.testing.assert_close(only_last[(1, 0)][1], maps[(1, 0)][1])
    assert len(classify_heads(maps.values())) == 8


def test_collect_maps_in_a_window_sees_only_the_first_frames():
    """With a window of 20, the maps of longer utterances are those of their first 20
    frames alone (the same as collecting on those frames), shorter ones are untouched."""
    torch.manual_seed(0)
    model = AudioALBERT(AudioALBERTConfig.tiny(attention="full"))
    lengths = [17, 30, 9, 45]
    data = tiny_dataset(lengths)
    windowed = collect_maps(model, data, collate, utterances=4, batch_size=2, window=20)
    cut = [{**item, "features": item["features"][:20]} for item in data]
    expected = collect_maps(model, cut, collate, utterances=4, batch_size=2)
    for key, per_utterance in windowed.items():
        assert [m.shape for m in per_utterance] == [(min(t, 20),) * 2 for t in lengths]
        for got, want in zip(per_utterance, expected[key]):
            torch.testing.assert_close(got, want)
    whole = collect_maps(model, data, collate, utterances=4, batch_size=2)
    assert whole[(0, 0)][1].shape == (30, 30)
    with pytest.raises(ValueError, match="window"):
        collect_maps(model, data, collate, window=0)


def test_embedding_and_plot(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    roles = ["diagonal", "increasing", "decreasing", "sparse"]
    maps = [noisy_map(synthetic_logits(role, t, columns=(4, 20)), 0.5, t) for role in roles for t in (40, 60, 80)]
    points = embed_maps(maps, size=16, pca_dims=5)
    assert points.shape == (12, 2)
    labels = [role for role in roles for _ in range(3)]
    plot_embedding(points, labels, tmp_path / "tsne.png")
    assert (tmp_path / "tsne.png").stat().st_size > 0
