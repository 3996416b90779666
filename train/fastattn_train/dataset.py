"""The speech dataset the model half consumes: CMVN-normalised log-mel features with speaker and
frame phone labels, and the ``collate`` that pads a batch.

``load_dataset(root, split)`` reads a LibriSpeech-layout corpus (``corpus.librispeech``),
computes or reuses cached features (``features``) and normalises them with statistics of the
training split. Vocabularies come from the training split too, so indices agree across splits;
a speaker or phone the training split lacks gets ``IGNORE_INDEX``, like padding.
"""

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .corpus.librispeech import read_split
from .corpus.records import SkipLog, Utterance
from .features import FeatureSettings, cache_features, cmvn_statistics

IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default ignore_index

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fastattn_train" / "features"


class UtteranceDataset(Dataset):
    """Utterances of one split.

    Item i: ``{"id": str, "features": FloatTensor (T, F) after CMVN, "speaker": int,
    "phones": LongTensor (T,) or None}``.

    ``speakers`` and ``phones`` are the label vocabularies (``phones`` is empty when the corpus
    has no frame labels), ``feature_dim`` is F, and ``skipped`` lists the utterances of this split
    that were left out and why.
    """

    def __init__(self, utterances: list[Utterance], feature_files: list[Path], mean: np.ndarray,
                 std: np.ndarray, speakers: list[str], phones: list[str], skipped: SkipLog):
        self.utterances = utterances
        self.speakers = speakers
        self.phones = phones
        self.feature_dim = len(mean)
        self.skipped = skipped
        self._feature_files = feature_files
        self._mean, self._std = mean, std
        self._speaker_index = {s: i for i, s in enumerate(speakers)}
        self._phone_index = {p: i for i, p in enumerate(phones)}

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """The (mean, std) per feature, from the training split, that normalise every split."""
        return self._mean, self._std

    def __getitem__(self, i: int) -> dict:
        utterance = self.utterances[i]
        features = (np.load(self._feature_files[i]) - self._mean) / self._std
        phones = None
        if utterance.phones is not None and self.phones:
            phones = torch.tensor([self._phone_index.get(p, IGNORE_INDEX) for p in utterance.phones])
        return {
            "id": utterance.id,
            "features": torch.from_numpy(features),
            "speaker": self._speaker_index.get(utterance.speaker, IGNORE_INDEX),
            "phones": phones,
        }


def collate(batch: list[dict]) -> dict:
    """Pads a list of items into ``{"ids", "features" (B, Tmax, F), "key_padding_mask" (B, Tmax)
    True at padding, "lengths" (B,), "speaker" (B,), "phones" (B, Tmax) IGNORE_INDEX at padding,
    or None when the items have no phone labels}``."""
    lengths = torch.tensor([len(item["features"]) for item in batch])
    features = torch.nn.utils.rnn.pad_sequence([item["features"] for item in batch], batch_first=True)
    key_padding_mask = torch.arange(features.shape[1])[None, :] >= lengths[:, None]
    has_phones = [item["phones"] is not None for item in batch]
    if any(has_phones) and not all(has_phones):
        raise ValueError("collate: some items have phone labels and some do not")
    phones = (torch.nn.utils.rnn.pad_sequence([item["phones"] for item in batch], batch_first=True,
                                              padding_value=IGNORE_INDEX)
              if all(has_phones) else None)
    return {
        "ids": [item["id"] for item in batch],
        "features": features,
        "key_padding_mask": key_padding_mask,
        "lengths": lengths,
        "speaker": torch.tensor([item["speaker"] for item in batch]),
        "phones": phones,
    }


def load_dataset(root: Path, split: str, settings: FeatureSettings = FeatureSettings(),
                 cache_dir: Path | None = None, train_split: str = "train",
                 frame_tolerance: int = 0) -> UtteranceDataset:
    """The ``split`` of the corpus at ``root``, normalised with ``train_split``'s statistics.

    Features are cached under ``cache_dir`` (default: ``default_cache_dir()``). Unusable
    utterances are skipped, logged and listed in the dataset's ``skipped``.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    train, train_files, train_skips = _read_with_features(root, train_split, settings, cache_dir,
                                                          frame_tolerance)
    if not train:
        raise ValueError(f"train_split {train_split!r} of {root} has no usable utterance")
    if split == train_split:
        utterances, files, skips = train, train_files, train_skips
    else:
        utterances, files, skips = _read_with_features(root, split, settings, cache_dir,
                                                       frame_tolerance)
    mean, std = cmvn_statistics(np.load(f) for f in train_files)
    speakers = _natural_order({u.speaker for u in train})
    phones = _natural_order({p for u in train if u.phones for p in u.phones})
    _warn_unknown(split, "speakers", {u.speaker for u in utterances} - set(speakers))
    _warn_unknown(split, "phones", {p for u in utterances if u.phones for p in u.phones} - set(phones))
    return UtteranceDataset(utterances, files, mean, std, speakers, phones, skips)


def _read_with_features(root, split, settings, cache_dir, frame_tolerance):
    utterances, skips = read_split(root, split, frame_tolerance=frame_tolerance)
    kept, files = [], []
    for utterance in utterances:
        try:
            files.append(cache_features(utterance, settings, cache_dir))
        except (ValueError, RuntimeError, OSError) as error:  # soundfile raises RuntimeError subclasses
            skips.skip(utterance.id, f"features failed: {error}")
            continue
        kept.append(utterance)
    if skips:
        log.warning("split %r of %s: %d items skipped, %d utterances kept", split, root,
                    len(skips), len(kept))
    return kept, files, skips


def _natural_order(names: set[str]) -> list[str]:
    """Numeric names (LibriSpeech speakers, s3prl class ids) in numeric order, then the rest."""
    return sorted(names, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))


def _warn_unknown(split, what, unknown):
    if unknown:
        log.warning("split %r has %d %s absent from the training split, labelled %d: %s",
                    split, len(unknown), what, IGNORE_INDEX, sorted(unknown)[:10])
