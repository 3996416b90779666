"""fastattn_train.probes: the four probes learn the synthetic corpus's speakers and phones
from frozen features of any layer or a learned weighted sum of layers, standardised with
train statistics, pool only valid frames, and name what they refuse."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fastattn.nn import AudioALBERT, AudioALBERTConfig
from fastattn_train.probes import (ProbeConfig, SplitFeatures, encoder_features, extract, extract_splits,
                                   input_features, layer_of, lr_schedule, mean_pool, run_layer_sweep, run_probes,
                                   standardised)
from train_cases import SyntheticSpeech, collate

SMALL = ProbeConfig(hidden_size=32, lr=1e-2, max_epochs=30, patience=5, utterance_batch_size=8, frame_batch_size=256,
                    device="cpu")


def splits(**options):
    return [SyntheticSpeech(count, seed, **options) for count, seed in ((48, 10), (16, 11), (16, 12))]


def tiny_encoder():
    torch.manual_seed(0)
    return AudioALBERT(AudioALBERTConfig.tiny(input_dim=12, dropout=0.0))


def test_probes_on_input_features_beat_chance_clearly():
    results = run_probes(input_features, *splits(), collate, SMALL)
    chance_speaker, chance_phone = 1 / 6, 1 / 8
    test = results["test"]
    assert test["speaker_utterance"] > 0.8 and test["speaker_frame"] > 3 * chance_speaker, test
    assert test["phone_1hidden"] > 3 * chance_phone and test["phone_2hidden"] > 3 * chance_phone, test
    assert set(results["dev"]) == set(test) and all(0 < n <= 30 for n in results["epochs"].values())
    assert set(results["extraction_seconds"]) == {"train", "dev", "test"}


def test_probes_on_a_frozen_encoder_beat_chance_and_leave_it_untouched():
    encoder = tiny_encoder()
    before = {name: value.clone() for name, value in encoder.state_dict().items()}
    results = run_probes(encoder_features(encoder), *splits(), collate,
                         dataclasses.replace(SMALL, max_epochs=15), tasks=("speaker_utterance", "phone_1hidden"))
    assert results["test"]["speaker_utterance"] > 0.5 and results["test"]["phone_1hidden"] > 0.3, results
    assert all(torch.equal(before[name], value) for name, value in encoder.state_dict().items())


def test_utterance_pooling_reads_valid_frames_only():
    hidden = torch.randn(3, 10, 4)
    padding = torch.arange(10)[None] >= torch.tensor([10, 6, 1])[:, None]
    poisoned = hidden.masked_fill(padding[..., None], float("nan"))
    pooled = mean_pool(poisoned, padding)
    for b, length in enumerate((10, 6, 1)):
        torch.testing.assert_close(pooled[b], hidden[b, :length].mean(0))

    data = SyntheticSpeech(9, seed=3)  # lengths 30 to 60 in batches of 4: padding in most batches
    features = extract(input_features, data, collate, batch_size=4)
    for index in range(len(data)):
        assert torch.equal(features.frames[index], data[index]["features"])
        torch.testing.assert_close(features.pooled[index], data[index]["features"].mean(0))

    encoder = tiny_encoder().eval()
    batched = extract(encoder_features(encoder), data, collate, batch_size=4)
    alone = extract(encoder_features(encoder), data, collate, batch_size=1)
    torch.testing.assert_close(batched.pooled, alone.pooled, atol=1e-5, rtol=1e-5)


def test_features_are_standardised_with_the_train_split_statistics():
    def split(frames):
        return SplitFeatures(frames=frames, pooled=torch.stack([f.mean(0) for f in frames]),
                             speakers=torch.zeros(len(frames), dtype=torch.long), phones=None, seconds=0.0)

    generator = torch.Generator().manual_seed(0)
    train = [3 + 5 * torch.randn(n, 4, generator=generator) for n in (7, 9, 11)]
    train[0][:, 3] = train[1][:, 3] = train[2][:, 3] = 2.0  # a feature constant on train
    dev = [3 + 5 * torch.randn(6, 4, generator=generator)]
    got = standardised({"train": split(train), "dev": split(dev)})
    frames = torch.cat(got["train"].frames)
    torch.testing.assert_close(frames[:, :3].mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(frames[:, :3].std(0), torch.ones(3))
    assert frames[:, 3].eq(0).all()
    everything = torch.cat(train)
    mean, std = everything.mean(0), everything.std(0)
    torch.testing.assert_close(got["dev"].frames[0][:, :3], ((dev[0] - mean) / std)[:, :3])
    torch.testing.assert_close(got["dev"].frames[0][:, 3], dev[0][:, 3] - 2.0)  # centred, not scaled


def test_any_layer_and_a_weighted_sum_of_all_of_them():
    encoder = tiny_encoder().eval()
    data = SyntheticSpeech(4, seed=3)
    layers = encoder.config.num_layers
    every = extract(encoder_features(encoder, "weighted"), data, collate)
    assert every.frames[0].shape[1:] == (layers + 1, encoder.config.hidden_size)
    for layer in (0, layers):
        one = extract(encoder_features(encoder, layer), data, collate)
        torch.testing.assert_close(one.frames[1], every.frames[1][:, layer])
    torch.testing.assert_close(extract(encoder_features(encoder), data, collate).pooled, every.pooled[:, layers])

    results = run_probes(encoder_features(encoder, "weighted"), *splits(), collate,
                         dataclasses.replace(SMALL, max_epochs=10), tasks=("speaker_utterance", "phone_1hidden"))
    assert results["test"]["speaker_utterance"] > 0.5 and results["test"]["phone_1hidden"] > 0.3, results
    for weights in results["layer_weights"].values():
        assert len(weights) == layers + 1 and abs(sum(weights) - 1) < 1e-5
    assert "layer_weights" not in run_probes(input_features, *splits(), collate, dataclasses.replace(SMALL, max_epochs=1),
                                             tasks=("speaker_utterance",))


def test_layer_sweep_probes_each_layer_alone_and_picks_the_best_on_dev():
    """Each layer's results are those of probing that layer alone (same seeds, same
    standardisation), and the best on dev is the layer with the highest dev accuracy."""
    encoder = tiny_encoder().eval()
    config, tasks = dataclasses.replace(SMALL, max_epochs=4), ("speaker_utterance", "phone_1hidden")
    sweep = run_layer_sweep(encoder, *splits(), collate, config, tasks=tasks)
    layers = encoder.config.num_layers
    assert sorted(sweep["layers"]) == list(range(layers + 1))
    alone = run_probes(encoder_features(encoder, 1), *splits(), collate, config, tasks=tasks)
    assert sweep["layers"][1]["test"] == pytest.approx(alone["test"])
    for task in tasks:
        best = sweep["best_on_dev"][task]
        assert best["dev"] == max(result["dev"][task] for result in sweep["layers"].values())
        assert best["test"] == sweep["layers"][best["layer"]]["test"][task]


def test_one_layer_of_an_extraction_of_every_layer_equals_that_layer_extracted_alone():
    """The report probes a model's last layer and its weighted layers from one extraction."""
    encoder = tiny_encoder().eval()
    every = extract_splits(encoder_features(encoder, "weighted"), *splits(), collate, SMALL)
    alone = extract_splits(encoder_features(encoder), *splits(), collate, SMALL)
    for name, split in layer_of(every, -1).items():
        torch.testing.assert_close(torch.cat(split.frames), torch.cat(alone[name].frames))
        torch.testing.assert_close(split.pooled, alone[name].pooled)
        assert torch.equal(split.speakers, alone[name].speakers)


@pytest.mark.parametrize("layer", [-1, 99, "first", True])
def test_a_layer_the_encoder_does_not_have_is_named(layer):
    with pytest.raises(ValueError, match="layer must be"):
        encoder_features(tiny_encoder(), layer)


def test_phone_probes_are_skipped_without_phone_labels():
    unlabelled = splits()
    for split in unlabelled:
        split.items = [{**item, "phones": None} for item in split.items]

    def collate_without_phones(batch):
        return {**collate([{**item, "phones": torch.zeros(len(item["features"]), dtype=torch.long)}
                           for item in batch]), "phones": None}

    results = run_probes(input_features, *unlabelled, collate_without_phones,
                         dataclasses.replace(SMALL, max_epochs=3), tasks=("speaker_utterance", "phone_1hidden"))
    assert results["test"]["phone_1hidden"] is None and results["test"]["speaker_utterance"] is not None


def test_mismatched_labels_and_unknown_tasks_are_named():
    train, dev, test = splits()
    dev.speakers = dev.speakers[::-1]
    with pytest.raises(ValueError, match="dev.speakers"):
        run_probes(input_features, train, dev, test, collate, SMALL)
    with pytest.raises(ValueError, match="speaker_sentence"):
        run_probes(input_features, *splits(), collate, SMALL, tasks=("speaker_sentence",))


@pytest.mark.parametrize("field, value", [("max_epochs", 0), ("patience", -1), ("hidden_size", 2.5),
                                          ("frame_batch_size", 0), ("lr", 0.0), ("decay", "cosine")])
def test_probe_settings_that_cannot_train_are_refused(field, value):
    with pytest.raises(ValueError, match=f"ProbeConfig.{field} must be"):
        ProbeConfig(**{field: value})


@pytest.mark.parametrize("decay", ["linear", "constant"])
def test_probe_learning_rate_falls_linearly_to_zero_at_the_last_epoch_or_stays(decay):
    config = dataclasses.replace(SMALL, lr=0.5, max_epochs=3, decay=decay)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    schedule = lr_schedule(optimizer, config, steps_per_epoch=4)
    rates = []
    for _ in range(12):  # 3 epochs of 4 steps
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    expected = [0.5 * (1 - step / 12) for step in range(12)] if decay == "linear" else [0.5] * 12
    assert rates == pytest.approx(expected)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0 if decay == "linear" else 0.5)


def test_windowed_extraction_feeds_pieces_of_at_most_the_window():
    """Utterances of 30 to 60 frames in windows of 16: each piece goes through the encoder
    alone (so the features of a piece are those of the piece run by itself), no piece is
    longer than the window, and utterances within the window are extracted whole."""
    encoder = tiny_encoder().eval()
    data = SyntheticSpeech(5, seed=3)
    seen_lengths = []
    original_forward = encoder.forward

    def recording_forward(features, key_padding_mask=None, **options):
        seen_lengths.extend((~key_padding_mask).sum(1).tolist())
        return original_forward(features, key_padding_mask, **options)

    encoder.forward = recording_forward
    windowed = extract(encoder_features(encoder, window=16), data, collate, batch_size=2)
    assert max(seen_lengths) <= 16 and sum(seen_lengths) == sum(len(item["features"]) for item in data)
    encoder.forward = original_forward
    for index in range(len(data)):
        frames = data[index]["features"]
        count = -(-len(frames) // 16)
        size = -(-len(frames) // count)
        pieces = [encoder_features(encoder)(frames[None, start:start + size],
                                            torch.zeros(1, len(frames[start:start + size]), dtype=torch.bool))[0]
                  for start in range(0, len(frames), size)]
        torch.testing.assert_close(windowed.frames[index], torch.cat(pieces), atol=1e-5, rtol=1e-5)
    whole = extract(encoder_features(encoder, "weighted"), data, collate, batch_size=2)
    within = extract(encoder_features(encoder, "weighted", window=60), data, collate, batch_size=2)
    for a, b in zip(whole.frames, within.frames):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="window"):
        encoder_features(encoder, window=0)
