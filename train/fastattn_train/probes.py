"""The paper's four probes on frozen features (SPEC section 7): utterance speaker (mean over
the valid frames, linear), frame speaker (linear per frame), and frame phoneme with one and
with two hidden layers (ReLU). Each trains on the train split, keeps the epoch with the best
dev accuracy (early stopping) and reports accuracy pooled over the test utterances or frames.

A feature extractor maps (features (B, T, F), key_padding_mask (B, T)) to (B, T, D), or to
(B, T, layers, D) for a learned weighted sum of layers: `encoder_features(encoder, layer)`
for a pre-trained model (any layer, the last, or all of them weighted as s3prl's featurizer
does), `input_features` for the log-mel baseline row. Each split is extracted once, without
gradients, kept in memory and standardised with the train split's statistics (per feature,
and per layer), so that every feature set, log-mel included, meets the probes on the same
scale.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

TASKS = ("speaker_utterance", "speaker_frame", "phone_1hidden", "phone_2hidden")
PROBE_DECAYS = ("linear", "constant")  # ProbeConfig.decay


@dataclass
class ProbeConfig:
    hidden_size: int = 768  # width of the phone probes' hidden layers (the paper's)
    lr: float = 1e-3  # Adam's peak
    decay: str = "linear"  # "linear" to 0 at max_epochs, or "constant"
    max_epochs: int = 50
    patience: int = 5  # epochs without a better dev accuracy before stopping
    # Small batches: an epoch costs the same FLOPs at any batch size, and more steps per epoch
    # reach a better probe in the same epochs (8 epochs of a 2-hidden phone probe on tiny
    # features: 0.875 at 4096 frames a batch, 0.899 at 1024; utterance speaker 0.73 at 32
    # utterances, 0.78 at 8).
    utterance_batch_size: int = 8
    frame_batch_size: int = 1024
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
        if self.decay not in PROBE_DECAYS:
            raise ValueError(f"ProbeConfig.decay must be one of {', '.join(PROBE_DECAYS)}, got {self.decay!r}")


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


LAYERS = ("last", "weighted")  # besides a layer's number


def encoder_features(encoder: nn.Module, layer: int | str = "last", window: int | None = None):
    """An extractor reading `encoder`'s last hidden state ("last"), hidden_states[layer] (an
    int: 0 is the embedding, num_layers the last layer), or every hidden state stacked as
    (B, T, num_layers + 1, D) for a probe that learns a softmax-weighted sum of them
    ("weighted").

    With a `window` (the pre-training crop length, max_frames), each utterance longer than it
    is cut into the fewest equal pieces of at most `window` frames, each piece goes through
    the encoder alone and the outputs are put back in place (as s3prl cuts inputs to the
    pre-training length). The encoder then never sees a position it was not trained at: an
    utterance longer than the crops would meet untrained position encodings and, for the
    kinds with weights over positions (fixed_pattern, synth_*), logits that never moved from
    their start, and its rows would normalise over more keys than in training. The price is
    context across a piece's edge. None: whole utterances."""
    layers = encoder.config.num_layers
    if not (layer in LAYERS or (isinstance(layer, int) and not isinstance(layer, bool) and 0 <= layer <= layers)):
        raise ValueError(f"layer must be 'last', 'weighted' or a layer from 0 (the embedding) to {layers}, "
                         f"got {layer!r}")
    if window is not None and not (isinstance(window, int) and window >= 1):
        raise ValueError(f"window must be a positive number of frames or None, got {window!r}")
    encoder.eval()

    def whole(features, key_padding_mask):
        out = encoder(features, key_padding_mask, output_hidden_states=layer != "last")
        if layer == "last":
            return out.last_hidden_state
        return torch.stack(out.hidden_states, dim=2) if layer == "weighted" else out.hidden_states[layer]

    def windowed(features, key_padding_mask):
        pieces, places = [], []  # places: (utterance, first frame) of each piece
        for b, length in enumerate((~key_padding_mask).sum(1).tolist()):
            count = -(-length // window)  # ceil: the fewest pieces of at most `window` frames
            size = -(-length // count) if count else 1  # ceil: frames per piece, all but the last equal
            for start in range(0, length, size):
                pieces.append(features[b, start:min(start + size, length)])  # never the batch's padding
                places.append((b, start))
        out = None
        if pieces:
            sizes = torch.tensor([len(piece) for piece in pieces], device=features.device)
            padding = torch.arange(int(sizes.max()), device=features.device) >= sizes[:, None]
            hidden = whole(nn.utils.rnn.pad_sequence(pieces, batch_first=True), padding)
            out = hidden.new_zeros(*features.shape[:2], *hidden.shape[2:])
            for (b, start), piece, size in zip(places, hidden, sizes.tolist()):
                out[b, start:start + size] = piece[:size]
        return out if out is not None else whole(features, key_padding_mask)

    return whole if window is None else windowed


def mean_pool(hidden, key_padding_mask):
    """(B, T, ...) -> (B, ...): the mean over each utterance's valid frames only (whatever the
    padded positions hold, NaN included)."""
    padded = key_padding_mask.view(*key_padding_mask.shape, *[1] * (hidden.dim() - 2))
    count = (~padded).sum(1).clamp(min=1)
    return hidden.masked_fill(padded, 0.0).sum(1) / count


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


def standardised(splits: dict[str, SplitFeatures]) -> dict[str, SplitFeatures]:
    """Every split's frames and pooled vectors as (x - mean) / std, with the mean and standard
    deviation of the train split's (per feature, and per layer where there are layers); a
    feature constant on train is only centred."""
    def statistics(x):  # a feature without spread on train (or a single sample) is only centred
        spread = x.std(0) if len(x) > 1 else torch.zeros_like(x[0])
        return x.mean(0), torch.where(spread > 1e-6, spread, torch.ones_like(spread))

    frame_mean, frame_std = statistics(torch.cat(splits["train"].frames))
    pooled_mean, pooled_std = statistics(splits["train"].pooled)
    return {name: dataclasses.replace(split, frames=[(f - frame_mean) / frame_std for f in split.frames],
                                      pooled=(split.pooled - pooled_mean) / pooled_std)
            for name, split in splits.items()}


class LayerWeights(nn.Module):
    """s3prl's featurizer: (N, layers, D) -> (N, D), a softmax-weighted sum of the layers with
    weights learned with the probe (starting equal)."""

    def __init__(self, layers: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(layers))

    def forward(self, x):
        return torch.einsum("l,nld->nd", self.logits.softmax(0), x)


def make_probe(task: str, width: int, classes: int, hidden_size: int, layers: int | None = None) -> nn.Module:
    """The task's probe on `width` features, behind LayerWeights when the features have `layers`."""
    modules, last = [LayerWeights(layers)] if layers is not None else [], width
    for _ in range({"phone_1hidden": 1, "phone_2hidden": 2}.get(task, 0)):
        modules += [nn.Linear(last, hidden_size), nn.ReLU()]
        last = hidden_size
    return nn.Sequential(*modules, nn.Linear(last, classes))


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


def lr_schedule(optimizer: torch.optim.Optimizer, config: ProbeConfig, steps_per_epoch: int):
    """A per-step LambdaLR: config.decay "linear" takes the learning rate from config.lr down
    to 0 at the end of epoch config.max_epochs, "constant" keeps it. The decay settles a probe
    within a short budget, the last steps refining what the larger early ones found: a 2-hidden
    phone probe on tiny features reached 0.918 in 5 epochs decayed from 3e-3, against 0.889 at
    a constant 3e-3 and 0.901 in 8 epochs at a constant 1e-3."""
    total = config.max_epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 1.0 - step / total) if config.decay == "linear" else 1.0)


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
        probe = make_probe(task, inputs.shape[-1], classes, config.hidden_size,
                           inputs.shape[1] if inputs.dim() == 3 else None).to(device)
    optimizer = torch.optim.Adam(probe.parameters(), lr=config.lr)
    schedule = lr_schedule(optimizer, config, steps_per_epoch=-(-len(labels) // batch_size))
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
            schedule.step()
        dev = accuracy(probe, *data["dev"], batch_size)
        if dev > best:
            best, since_best = dev, 0
            best_state = {name: value.clone() for name, value in probe.state_dict().items()}
        else:
            since_best += 1
            if since_best >= config.patience:
                break
    probe.load_state_dict(best_state)
    result = {"dev": best, "test": accuracy(probe, *data["test"], batch_size), "epochs": epoch}
    if isinstance(probe[0], LayerWeights):
        result["layer_weights"] = probe[0].logits.softmax(0).tolist()
    return result


def run_probes(extractor, train, dev, test, collate, config: ProbeConfig = ProbeConfig(),
               tasks: tuple[str, ...] = TASKS) -> dict:
    """Extracts train, dev and test once each with `extractor` and trains the `tasks` probes.

    The datasets follow fastattn_train.dataset's interface (items with "features",
    "speaker", "phones"; `speakers` and `phones` name the classes, shared by the splits).

    Returns {"test": {task: accuracy}, "dev": {task: accuracy}, "epochs": {task: epochs},
    "extraction_seconds": {split: seconds}}, and for features with layers "layer_weights":
    {task: the learned weight of each layer}; a phone task is None where a split has no
    phone labels.
    """
    return probe_extracted(extract_splits(extractor, train, dev, test, collate, config, tasks), train, config, tasks)


def probe_extracted(splits: dict[str, SplitFeatures], train, config: ProbeConfig = ProbeConfig(),
                    tasks: tuple[str, ...] = TASKS) -> dict:
    """run_probes on splits extract_splits gave: one extraction can serve several probe runs
    (a layer of it alone, layer_of, and all its layers weighted)."""
    return {**_probe_tasks(splits, train, config, tasks),
            "extraction_seconds": {name: split.seconds for name, split in splits.items()}}


def layer_of(splits: dict[str, SplitFeatures], layer: int) -> dict[str, SplitFeatures]:
    """Splits of features with layers, (.., layers, D), reduced to one layer's (-1: the last).
    The train statistics a split was standardised with are per layer, so this equals
    extracting and standardising that layer alone."""
    return {name: dataclasses.replace(split, frames=[f[:, layer] for f in split.frames], pooled=split.pooled[:, layer])
            for name, split in splits.items()}


def run_layer_sweep(encoder: nn.Module, train, dev, test, collate, config: ProbeConfig = ProbeConfig(),
                    tasks: tuple[str, ...] = TASKS, window: int | None = None) -> dict:
    """Probes each layer of `encoder` alone (0, the embedding, to num_layers), from one
    extraction of all of them (encoder_features(encoder, "weighted", window)), and picks the
    layer best on dev for each task.

    Returns {"layers": {layer: run_probes' "test", "dev" and "epochs" of that layer},
    "best_on_dev": {task: {"layer", "dev", "test"}} (None for a phone task without
    labels), "extraction_seconds": {split: seconds}}."""
    splits = extract_splits(encoder_features(encoder, "weighted", window), train, dev, test, collate, config, tasks)
    layers = {layer: _probe_tasks(layer_of(splits, layer), train, config, tasks)
              for layer in range(encoder.config.num_layers + 1)}
    best = {}
    for task in tasks:
        scored = [layer for layer, result in layers.items() if result["dev"][task] is not None]
        chosen = max(scored, key=lambda layer: layers[layer]["dev"][task], default=None)
        best[task] = None if chosen is None else {"layer": chosen, "dev": layers[chosen]["dev"][task],
                                                  "test": layers[chosen]["test"][task]}
    return {"layers": layers, "best_on_dev": best,
            "extraction_seconds": {name: split.seconds for name, split in splits.items()}}


def extract_splits(extractor, train, dev, test, collate, config: ProbeConfig = ProbeConfig(),
                   tasks: tuple[str, ...] = TASKS) -> dict[str, SplitFeatures]:
    """The three splits extracted with `extractor` and standardised, after checking the tasks
    and that the splits share their label lists."""
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; tasks are {', '.join(TASKS)}")
    for name, split in (("dev", dev), ("test", test)):
        for labels in ("speakers", "phones"):
            if getattr(split, labels) != getattr(train, labels):
                raise ValueError(f"{name}.{labels} differs from train.{labels}: the splits' labels must index "
                                 f"one shared list")
    device = probe_device(config)
    return standardised({name: extract(extractor, dataset, collate, batch_size=config.extract_batch_size,
                                       device=device)
                         for name, dataset in (("train", train), ("dev", dev), ("test", test))})


def _probe_tasks(splits: dict[str, SplitFeatures], train, config: ProbeConfig, tasks: tuple[str, ...]) -> dict:
    """Trains each task's probe on extracted splits: run_probes' results but the seconds."""
    device = probe_device(config)
    results = {"test": {}, "dev": {}, "epochs": {}}
    for task in tasks:
        speaker_task = task.startswith("speaker")
        if not speaker_task and any(split.phones is None for split in splits.values()):
            result = {"dev": None, "test": None, "epochs": 0}
        else:
            classes = len(train.speakers if speaker_task else train.phones)
            result = train_probe(task, classes, splits, config, device)
        for key in ("test", "dev", "epochs"):
            results[key][task] = result[key]
        if "layer_weights" in result:
            results.setdefault("layer_weights", {})[task] = result["layer_weights"]
    return results
