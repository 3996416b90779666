"""The paper's four probes on frozen features (SPEC section 7): utterance speaker (mean over
the valid frames, linear), frame speaker (linear per frame), and frame phoneme with one and
with two hidden layers (ReLU). Each trains on the train split, keeps the epoch with the best
dev accuracy (early stopping) and reports accuracy pooled over the test utterances or frames.

A feature extractor maps (features (B, T, F), key_padding_mask (B, T)) to (B, T, D):
`encoder_features(encoder)` for a pre-trained model, `input_features` for the log-mel
baseline row. Each split is extracted once, without gradients, and kept in memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

TASKS = ("speaker_utterance", "speaker_frame", "phone_1hidden", "phone_2hidden")


@dataclass
class ProbeConfig:
    hidden_size: int = 768  # width of the phone probes' hidden layers (the paper's)
    lr: float = 1e-3  # Adam
    max_epochs: int = 50
    patience: int = 5  # epochs without a better dev accuracy before stopping
    utterance_batch_size: int = 32
    frame_batch_size: int = 4096
    extract_batch_size: int = 16  # utterances per encoder forward
    seed: int = 0
    device: str | None = None  # None: CUDA when available

    def __post_init__(self):
        for name in ("hidden_size", "max_epochs", "patience", "utterance_batch_size", "frame_batch_size",
                     "extract_batch_size"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"ProbeConfig.{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"ProbeConfig.lr must be positive, got {self.lr!r}")


@dataclass
class SplitFeatures:
    """One split's frozen features: per-utterance frames (valid ones only), mean-pooled
    utterance vectors, labels, and the seconds extraction took."""

    frames: list[torch.Tensor]  # each (T_i, D)
    pooled: torch.Tensor  # (N, D)
    speakers: torch.Tensor  # (N,)
    phones: list[torch.Tensor] | None  # each (T_i,), -100 where unlabelled; None: no phone labels
    seconds: float


def probe_device(config: ProbeConfig) -> str:
    """Where the probes (and the extractor's inputs) go: config.device, else CUDA when available.
    An encoder extractor must be on this device too."""
    return config.device or ("cuda" if torch.cuda.is_available() else "cpu")


def input_features(features, key_padding_mask):
    """The identity: probes on the input log-mel frames (the paper's "Mel" row)."""
    return features


def encoder_features(encoder: nn.Module, layer: int | None = None):
    """An extractor reading `encoder`'s last hidden state, or hidden_states[layer] (0 is the
    embedding, num_layers the last layer)."""
    encoder.eval()

    def extract(features, key_padding_mask):
        out = encoder(features, key_padding_mask, output_hidden_states=layer is not None)
        return out.last_hidden_state if layer is None else out.hidden_states[layer]

    return extract


def mean_pool(hidden, key_padding_mask):
    """(B, T, D) -> (B, D): the mean over each utterance's valid frames only (whatever the
    padded positions hold, NaN included)."""
    count = (~key_padding_mask).sum(1, keepdim=True).clamp(min=1)
    return hidden.masked_fill(key_padding_mask.unsqueeze(-1), 0.0).sum(1) / count


@torch.no_grad()
def extract(extractor, dataset, collate, *, batch_size: int = 16, device="cpu") -> SplitFeatures:
    """Runs `extractor` once over `dataset` (in order) and keeps the features on the CPU."""
    frames, pooled, speakers, phones = [], [], [], []
    started = time.perf_counter()
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
        padding = batch["key_padding_mask"].to(device)
        hidden = extractor(batch["features"].to(device), padding).float()
        pooled.append(mean_pool(hidden, padding).cpu())
        hidden = hidden.cpu()
        for b, length in enumerate(batch["lengths"].tolist()):
            frames.append(hidden[b, :length].clone())  # not a view pinning the padded batch
            phones.append(None if batch["phones"] is None else batch["phones"][b, :length])
        speakers.append(batch["speaker"])
    if torch.device(device).type == "cuda":  # the clock must include the queued kernels
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    labelled = all(p is not None for p in phones)
    return SplitFeatures(frames, torch.cat(pooled), torch.cat(speakers).long(), phones if labelled else None,
                         seconds)


def make_probe(task: str, width: int, classes: int, hidden_size: int) -> nn.Module:
    if task in ("speaker_utterance", "speaker_frame"):
        return nn.Linear(width, classes)
    layers, last = [], width
    for _ in range({"phone_1hidden": 1, "phone_2hidden": 2}[task]):
        layers += [nn.Linear(last, hidden_size), nn.ReLU()]
        last = hidden_size
    return nn.Sequential(*layers, nn.Linear(last, classes))


def task_data(task: str, split: SplitFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs (N, D), labels (N,)) of a task; utterances and frames labelled -100 (a speaker
    or phone outside the train split's list) are left out."""
    if task == "speaker_utterance":
        inputs, labels = split.pooled, split.speakers
    elif task == "speaker_frame":
        inputs = torch.cat(split.frames)
        labels = torch.cat([speaker.expand(len(f)) for speaker, f in zip(split.speakers, split.frames)])
    else:
        inputs, labels = torch.cat(split.frames), torch.cat(split.phones)
    keep = labels != -100
    return inputs[keep], labels[keep]


@torch.no_grad()
def accuracy(probe: nn.Module, inputs, labels, batch_size: int) -> float:
    probe.eval()
    correct = sum(int((probe(inputs[i:i + batch_size]).argmax(-1) == labels[i:i + batch_size]).sum())
                  for i in range(0, len(labels), batch_size))
    return correct / max(1, len(labels))


def train_probe(task: str, classes: int, splits: dict[str, SplitFeatures], config: ProbeConfig,
                device) -> dict:
    """Trains one probe; returns {"dev", "test", "epochs"}: dev and test accuracy of the
    best dev epoch, and the epochs run."""
    data = {name: tuple(t.to(device) for t in task_data(task, split)) for name, split in splits.items()}
    (inputs, labels), batch_size = data["train"], (
        config.utterance_batch_size if task == "speaker_utterance" else config.frame_batch_size)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):  # a seeded initialisation that leaves the caller's stream alone
        torch.manual_seed(config.seed)
        probe = make_probe(task, inputs.shape[1], classes, config.hidden_size).to(device)
    optimizer = torch.optim.Adam(probe.parameters(), lr=config.lr)
    best, best_state, since_best, epoch = -1.0, None, 0, 0
    for epoch in range(1, config.max_epochs + 1):
        probe.train()
        order = torch.randperm(len(labels), generator=generator).to(device)
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(probe(inputs[chosen]), labels[chosen])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        dev = accuracy(probe, *data["dev"], batch_size)
        if dev > best:
            best, since_best = dev, 0
            best_state = {name: value.clone() for name, value in probe.state_dict().items()}
        else:
            since_best += 1
            if since_best >= config.patience:
                break
    probe.load_state_dict(best_state)
    return {"dev": best, "test": accuracy(probe, *data["test"], batch_size), "epochs": epoch}


def run_probes(extractor, train, dev, test, collate, config: ProbeConfig = ProbeConfig(),
               tasks: tuple[str, ...] = TASKS) -> dict:
    """Extracts train, dev and test once each with `extractor` and trains the `tasks` probes.

    The datasets follow fastattn_train.dataset's interface (items with "features",
    "speaker", "phones"; `speakers` and `phones` name the classes, shared by the splits).

    Returns {"test": {task: accuracy}, "dev": {task: accuracy}, "epochs": {task: epochs},
    "extraction_seconds": {split: seconds}}; a phone task is None where a split has no
    phone labels.
    """
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; tasks are {', '.join(TASKS)}")
    for name, split in (("dev", dev), ("test", test)):
        for labels in ("speakers", "phones"):
            if getattr(split, labels) != getattr(train, labels):
                raise ValueError(f"{name}.{labels} differs from train.{labels}: the splits' labels must index "
                                 f"one shared list")
    device = probe_device(config)
    splits = {name: extract(extractor, dataset, collate, batch_size=config.extract_batch_size, device=device)
              for name, dataset in (("train", train), ("dev", dev), ("test", test))}
    results = {"test": {}, "dev": {}, "epochs": {},
               "extraction_seconds": {name: split.seconds for name, split in splits.items()}}
    for task in tasks:
        speaker_task = task.startswith("speaker")
        if not speaker_task and any(split.phones is None for split in splits.values()):
            result = {"dev": None, "test": None, "epochs": 0}
        else:
            classes = len(train.speakers if speaker_task else train.phones)
            result = train_probe(task, classes, splits, config, device)
        for key in ("test", "dev", "epochs"):
            results[key][task] = result[key]
    return results
