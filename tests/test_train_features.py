"""Log-mel features, their disk cache, train-split CMVN, and the dataset/collate interface."""

import os

import numpy as np
import pytest
import soundfile
import torch

from fastattn_train import features as features_module
from fastattn_train.corpus.frames import num_frames
from fastattn_train.dataset import IGNORE_INDEX, collate, load_dataset
from fastattn_train.features import FeatureSettings, log_mel
from train_speech_fixtures import write_tone, write_two_speaker_corpus


@pytest.mark.parametrize("num_samples", [1, 159, 160, 161, 4799, 16000])
def test_log_mel_matches_torch_stft_reference_with_one_frame_per_label(num_samples):
    import librosa

    audio = np.random.default_rng(num_samples).standard_normal(num_samples).astype(np.float32) * 0.1
    ours = log_mel(audio, FeatureSettings())
    spectrum = torch.stft(torch.from_numpy(audio), n_fft=512, hop_length=160, win_length=400,
                          window=torch.hann_window(400), center=True, pad_mode="constant",
                          return_complex=True)
    mel = librosa.filters.mel(sr=16000, n_fft=512, n_mels=80)
    reference = np.log(mel @ spectrum.abs().square().numpy() + 1e-6).T
    assert ours.shape == (num_frames(num_samples), 80) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=2e-3)


def test_deltas_append_two_blocks_of_regression_slopes():
    audio = np.random.default_rng(0).standard_normal(3200).astype(np.float32)
    plain, stacked = log_mel(audio, FeatureSettings()), log_mel(audio, FeatureSettings(deltas=True))
    assert stacked.shape == (21, 240) and FeatureSettings(deltas=True).dim == 240
    np.testing.assert_array_equal(stacked[:, :80], plain)
    ramp = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32) * 2.0
    np.testing.assert_allclose(features_module._delta(ramp)[2:-2], 2.0)  # slope of the ramp


def test_settings_reject_impossible_windows():
    with pytest.raises(ValueError, match="win_length"):
        FeatureSettings(win_length=600, n_fft=512)


def test_cmvn_comes_from_the_train_split_only(tmp_path):
    # Dev is ten times louder than train: its own statistics would differ by log(100) per bin.
    write_two_speaker_corpus(tmp_path, dev_amplitude=3.0)
    train = load_dataset(tmp_path, "train", cache_dir=tmp_path / "cache")
    dev = load_dataset(tmp_path, "dev", cache_dir=tmp_path / "cache")
    train_frames = torch.cat([train[i]["features"] for i in range(len(train))])
    torch.testing.assert_close(train_frames.mean(0), torch.zeros(80), atol=1e-4, rtol=0)
    dev_frames = torch.cat([dev[i]["features"] for i in range(len(dev))])
    assert dev_frames.mean() > 1.0  # normalised by train's statistics, not by its own
    # Normalisation is global and affine: dev features are the raw log-mel under train's statistics.
    def raw_log_mel(utterance):
        return log_mel(soundfile.read(str(utterance.audio_path), dtype="float32")[0], FeatureSettings())

    raw = raw_log_mel(dev.utterances[0])
    train_raw = np.concatenate([raw_log_mel(u) for u in train.utterances])
    expected = (raw - train_raw.mean(0)) / train_raw.std(0)
    np.testing.assert_allclose(dev[0]["features"].numpy(), expected, rtol=1e-3, atol=1e-3)


def test_cache_is_reused_and_invalidated_by_settings_and_audio_changes(tmp_path, monkeypatch):
    write_two_speaker_corpus(tmp_path)
    cache = tmp_path / "cache"
    before = load_dataset(tmp_path, "dev", cache_dir=cache)[0]["features"]
    files = set(cache.iterdir())
    assert len(files) == 6  # 4 train (for CMVN) + 2 dev utterances

    def no_computation(*args):
        raise AssertionError("features were recomputed although cached")

    with monkeypatch.context() as patch:
        patch.setattr(features_module, "log_mel", no_computation)
        torch.testing.assert_close(load_dataset(tmp_path, "dev", cache_dir=cache)[0]["features"], before)

    with_deltas = load_dataset(tmp_path, "dev", FeatureSettings(deltas=True), cache_dir=cache)
    assert with_deltas.feature_dim == 240
    assert len(set(cache.iterdir()) - files) == 6

    audio_path = load_dataset(tmp_path, "dev", cache_dir=cache).utterances[0].audio_path
    write_tone(audio_path, 5000, 1500.0)  # same length, new content and modification time
    os.utime(audio_path, ns=(1, 1))
    after = load_dataset(tmp_path, "dev", cache_dir=cache)[0]["features"]
    assert not torch.allclose(after, before)


def test_items_share_vocabularies_across_splits(tmp_path):
    write_two_speaker_corpus(tmp_path)
    (tmp_path / "phones" / "dev.txt").write_text(
        (tmp_path / "phones" / "dev.txt").read_text().replace(" hi", " zz"))  # a phone train lacks
    train = load_dataset(tmp_path, "train", cache_dir=tmp_path / "cache")
    dev = load_dataset(tmp_path, "dev", cache_dir=tmp_path / "cache")
    assert train.speakers == dev.speakers == ["11", "22"]
    assert train.phones == dev.phones == ["hi", "lo", "sil"]
    item = dev[1]  # speaker 22, a 2500 Hz tone relabelled "zz"
    assert (item["id"], item["speaker"]) == ("22-6-0001", 1)
    assert item["features"].shape == (num_frames(3210), 80) and item["features"].dtype == torch.float32
    assert item["phones"].tolist() == [2] + [IGNORE_INDEX] * (num_frames(3210) - 1)
    assert dev[0]["phones"].tolist() == [2] + [1] * (num_frames(5000) - 1)


def test_collate_pads_features_masks_and_labels(tmp_path):
    write_two_speaker_corpus(tmp_path)
    train = load_dataset(tmp_path, "train", cache_dir=tmp_path / "cache")
    batch = collate([train[2], train[0]])  # 30 and 51 frames
    assert batch["ids"] == ["22-5-0000", "11-1-0000"]
    assert batch["features"].shape == (2, 51, 80)
    assert batch["lengths"].tolist() == [30, 51]
    assert batch["key_padding_mask"].dtype == torch.bool
    assert batch["key_padding_mask"].sum(1).tolist() == [21, 0]
    assert batch["key_padding_mask"][0, 29:31].tolist() == [False, True]
    assert torch.all(batch["features"][0, 30:] == 0)
    assert batch["speaker"].tolist() == [1, 0]
    assert torch.all(batch["phones"][0, 30:] == IGNORE_INDEX)
    assert torch.all(batch["phones"][0, 1:30] == train.phones.index("lo"))
    unlabelled = [{**train[0], "phones": None}, {**train[1], "phones": None}]
    assert collate(unlabelled)["phones"] is None
    with pytest.raises(ValueError, match="some items have phone labels"):
        collate([train[0], unlabelled[1]])


def test_truncated_audio_is_skipped_and_listed_by_the_dataset(tmp_path):
    write_two_speaker_corpus(tmp_path)
    broken = tmp_path / "dev" / "11" / "2" / "11-2-0000.wav"
    broken.write_bytes(broken.read_bytes()[:200])  # the header promises samples that are gone
    dev = load_dataset(tmp_path, "dev", cache_dir=tmp_path / "cache")
    assert [item["id"] for item in dev] == ["22-6-0001"]
    assert len(dev.skipped) == 1 and "frame labels for 1 audio frames" in dev.skipped.entries[0].reason
