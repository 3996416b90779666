"""A tiny synthetic speech corpus for the train package's tests, with the dataset interface
of fastattn_train.dataset: frames are a per-speaker offset plus a per-phone pattern plus
noise, phones come in runs of a few frames in a mostly fixed order, so speaker and phone are
both learnable and masked frames are predictable from their context."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class SyntheticSpeech(Dataset):
    """`utterances` items {"id", "features" (T, F), "speaker", "phones" (T,)}; lengths drawn
    from `lengths`. Splits made with the same `world_seed` share speakers and phones."""

    def __init__(self, utterances: int, seed: int, *, speakers: int = 6, phones: int = 8, feature_dim: int = 12,
                 lengths: tuple[int, int] = (30, 60), noise: float = 1.0, run: int = 4, world_seed: int = 0):
        world = torch.Generator().manual_seed(world_seed)
        speaker_offsets = torch.randn(speakers, feature_dim, generator=world)
        phone_patterns = 1.5 * torch.randn(phones, feature_dim, generator=world)
        self.speakers = [f"spk{i}" for i in range(speakers)]
        self.phones = [f"ph{i}" for i in range(phones)]
        self.feature_dim = feature_dim
        draw = torch.Generator().manual_seed(seed)
        self.items = []
        for index in range(utterances):
            length = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=draw))
            speaker = int(torch.randint(speakers, (1,), generator=draw))
            # runs of `run` frames; the next phone mostly follows the last, so masked spans
            # are predictable from their context
            steps = torch.where(torch.rand(length, generator=draw) < 0.8, 1,
                                torch.randint(phones, (length,), generator=draw))
            runs = (steps.cumsum(0) % phones).repeat_interleave(run)[:length]
            # a frame also carries half of its predecessor: context helps, as in speech
            clean = speaker_offsets[speaker] + phone_patterns[runs]
            clean[1:] += 0.5 * phone_patterns[runs[:-1]]
            features = clean + noise * torch.randn(length, feature_dim, generator=draw)
            self.items.append({"id": f"utt{seed}-{index}", "features": features, "speaker": speaker,
                               "phones": runs})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def collate(batch: list[dict]) -> dict:
    """The dataset interface's collate: zero padding at the end, -100 phones on padding."""
    lengths = torch.tensor([len(item["features"]) for item in batch])
    longest, width = int(lengths.max()), batch[0]["features"].shape[1]
    features = torch.zeros(len(batch), longest, width)
    phones = torch.full((len(batch), longest), -100, dtype=torch.long)
    for b, item in enumerate(batch):
        features[b, :lengths[b]] = item["features"]
        phones[b, :lengths[b]] = item["phones"]
    return {"features": features, "key_padding_mask": torch.arange(longest)[None] >= lengths[:, None],
            "lengths": lengths, "speaker": torch.tensor([item["speaker"] for item in batch]), "phones": phones}
