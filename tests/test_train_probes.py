"""fastattn_train.probes: the four probes learn the synthetic corpus's speakers and phones
from frozen features, pool only valid frames, and name what they refuse."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fastattn.nn import AudioALBERT, AudioALBERTConfig
from fastattn_train.probes import (ProbeConfig, encoder_features, extract, input_features, mean_pool,
                                   run_probes)
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
                                          ("frame_batch_size", 0), ("lr", 0.0)])
def test_probe_settings_that_cannot_train_are_refused(field, value):
    with pytest.raises(ValueError, match=f"ProbeConfig.{field} must be"):
        ProbeConfig(**{field: value})
