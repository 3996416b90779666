"""Masked acoustic model pre-training of Audio ALBERT (SPEC section 7), nanoGPT style: a
config dataclass (loadable from YAML), one loop that logs, checkpoints and resumes.

A run writes to `out_dir`: config.yaml (what was asked), log.jsonl (one line per logged
step: the batch's masked L1 and, on the same masks, that of the trivial predictors of
trivial_predictors.py), checkpoint.pt (the latest state, written atomically) and, when
TensorBoard is installed, tensorboard/. Resuming from checkpoint.pt continues bit for bit: the data order
is a function of (seed, epoch), the consumed batches of the current epoch are skipped
without loading them, and every random generator's state is restored.

Under torchrun (WORLD_SIZE > 1) each process trains a DistributedDataParallel replica on
its DistributedSampler share (batch_size is per process); rank 0 logs and checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from fastattn.nn import AudioALBERT, AudioALBERTConfig, input_independent_logits
from fastattn_train import trivial_predictors
from fastattn_train.checkpoint import (load_checkpoint, restore_rng_state, rng_state, save_checkpoint,
                                       write_atomically)
from fastattn_train.analysis.initialisation import apply_initialisation, load_initialisation
from fastattn_train.masking import MaskingConfig, mask_frames

DECAYS = ("linear", "cosine", "constant")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up, then a decay to zero at max_steps."""

    lr: float = 2e-4  # peak learning rate, reached at the end of warm-up
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6  # BERT's and Mockingjay's
    weight_decay: float = 0.01  # on weight matrices only; biases, LayerNorms and attention logits are not decayed
    # Learning rate of input-independent attention logits (synth_random, fixed_pattern), on the
    # same warm-up and decay; None: lr. Logits start at a peak of 8 and Adam moves a parameter
    # by about lr a step, so at lr = 1e-3 a few hundred steps move them by well under 1.
    logits_lr: float | None = None
    warmup_steps: int = 0
    decay: str = "linear"  # after warm-up: "linear" or "cosine" to 0 at max_steps, or "constant"
    grad_clip: float | None = 1.0  # max global gradient norm; None: no clipping

    def __post_init__(self):
        self.betas = tuple(self.betas)  # YAML gives a list
        if self.decay not in DECAYS:
            raise ValueError(f"optim.decay must be one of {', '.join(DECAYS)}, got {self.decay!r}")
        if not (self.lr > 0 and len(self.betas) == 2 and self.warmup_steps >= 0):
            raise ValueError(f"optim needs lr > 0, two betas and warmup_steps >= 0; got lr={self.lr!r}, "
                             f"betas={self.betas!r}, warmup_steps={self.warmup_steps!r}")
        if self.logits_lr is not None and not self.logits_lr > 0:
            raise ValueError(f"optim.logits_lr must be positive or None, got {self.logits_lr!r}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"optim.grad_clip must be positive or None, got {self.grad_clip!r}")


@dataclass
class PretrainConfig:
    model: AudioALBERTConfig = field(default_factory=AudioALBERTConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    batch_size: int = 50  # utterances per step and process
    max_steps: int = 500_000
    max_frames: int | None = None  # crop longer utterances to a random window this long; None: never
    log_every: int = 100
    checkpoint_every: int = 10_000
    seed: int = 0
    mixed_precision: bool = True  # bf16 autocast on CUDA; the CPU always runs float32
    num_workers: int = 0  # DataLoader worker processes
    out_dir: str = "runs/pretrain"
    progress: bool = True  # a progress bar on stderr (tqdm when installed)
    # fixed_pattern logits written by `fastattn analyse` (fixed_pattern_init.pt): a fresh run
    # starts its fixed_pattern attention from them instead of the paper's patterns.
    init_fixed_pattern: str | None = None

    def __post_init__(self):
        for name in ("batch_size", "max_steps", "log_every", "checkpoint_every"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_frames is not None and not (isinstance(self.max_frames, int) and self.max_frames >= 1):
            raise ValueError(f"max_frames must be a positive integer or None, got {self.max_frames!r}")
        if self.model.max_len is not None and (self.max_frames is None or self.max_frames > self.model.max_len):
            raise ValueError(f"model.max_len = {self.model.max_len} bounds T for attention "
                             f"{self.model.attention!r}: set max_frames to at most {self.model.max_len}, "
                             f"got {self.max_frames!r}")


SECTIONS = {"model": AudioALBERTConfig, "optim": OptimConfig, "masking": MaskingConfig}


def config_from_dict(values: dict, source: str = "config") -> PretrainConfig:
    """PretrainConfig from nested plain values (sections model, optim, masking); a key that
    is not a field is an error naming it, so a typo never passes silently."""
    sections = {}
    for name, cls in SECTIONS.items():
        if name in values:
            sections[name] = cls(**_known(cls, values[name], f"section {name!r} of {source}"))
    top = _known(PretrainConfig, {k: v for k, v in values.items() if k not in SECTIONS}, source)
    return PretrainConfig(**top, **sections)


def _known(cls, values, where: str) -> dict:
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping of keys to values, got {type(values).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(str, unknown))} in {where}; known: {', '.join(names)}")
    return values


def load_config(path: str | os.PathLike) -> PretrainConfig:
    with open(path) as file:
        return config_from_dict(yaml.safe_load(file) or {}, source=str(path))


def config_to_dict(config: PretrainConfig) -> dict:
    values = dataclasses.asdict(config)
    values["optim"]["betas"] = list(config.optim.betas)  # plain lists read back from YAML
    return values


class PredictionHead(nn.Module):
    """Mockingjay's reconstruction head: Linear, GELU, LayerNorm, then Linear back to the
    frame features."""

    def __init__(self, config: AudioALBERTConfig):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.GELU(),
                                 nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps),
                                 nn.Linear(config.hidden_size, config.input_dim))

    def forward(self, hidden):
        return self.net(hidden)


class MaskedAcousticModel(nn.Module):
    """The encoder and its head: corrupted frames (B, T, F) in, reconstructed frames out."""

    def __init__(self, config: AudioALBERTConfig):
        super().__init__()
        self.encoder = AudioALBERT(config)
        self.head = PredictionHead(config)

    def forward(self, features, key_padding_mask=None):
        return self.head(self.encoder(features, key_padding_mask).last_hidden_state)


def masked_l1(predicted, target, chosen):
    """L1 over the chosen frames only, averaged over them and their features (0, still part
    of the graph, when none is chosen)."""
    per_frame = (predicted.float() - target).abs().mean(-1)
    return per_frame.masked_select(chosen).sum() / chosen.sum().clamp(min=1)


def crop(features, key_padding_mask, max_frames: int | None, generator: torch.Generator):
    """Crops a batch padded at the end to max_frames, each longer utterance to a random window."""
    if max_frames is None or features.shape[1] <= max_frames:
        return features, key_padding_mask
    lengths = (~key_padding_mask).sum(1)
    room = (lengths - max_frames + 1).clamp(min=1)  # possible window starts
    starts = (torch.rand(len(lengths), generator=generator) * room).long()
    frames = starts[:, None] + torch.arange(max_frames)
    features = features.gather(1, frames[..., None].expand(-1, -1, features.shape[2]))
    return features, key_padding_mask.gather(1, frames)


def lr_factor(optim: OptimConfig, max_steps: int):
    """The multiplier of the peak learning rate at each step (for LambdaLR)."""

    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.decay == "constant":
            return 1.0
        progress = min(1.0, (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps))
        return 1.0 - progress if optim.decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW over three groups: weight matrices (decayed), biases and LayerNorm scales (the
    1-d parameters: BERT's rule, not decayed), and input-independent attention logits (their
    own learning rate, optim.logits_lr, and not decayed). Empty groups are left out."""
    logits = input_independent_logits(model)
    apart = {id(p) for p in logits}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in apart]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": optim.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
              {"params": logits, "weight_decay": 0.0, "lr": optim.logits_lr or optim.lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=optim.lr, betas=optim.betas, eps=optim.eps)


@dataclass
class Process:
    """Where this process sits in the run."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool  # this call initialised the process group, so it tears it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start_process(device: str | torch.device | None) -> Process:
    """Joins the torchrun group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on the CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if world_size == 1:
        return Process(0, 1, torch.device(device or ("cuda" if cuda else "cpu")), owns_group=False)
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if cuda else "gloo")
    return Process(dist.get_rank(), dist.get_world_size(), device, owns_group)


def pretrain(config: PretrainConfig, train_dataset, collate, *, resume: bool = True,
             device: str | torch.device | None = None) -> dict:
    """Pre-trains on `train_dataset` (items {"features": (T, F), ...}) batched by `collate`
    (-> {"features": (B, T, F), "key_padding_mask": (B, T), ...}) until config.max_steps,
    resuming from out_dir/checkpoint.pt when it exists and `resume` is true.

    Returns {"out_dir", "checkpoint", "step", "loss"} (loss: the last step's, all ranks' mean).
    """
    process = start_process(device)
    try:
        return _train(config, train_dataset, collate, resume, process)
    finally:
        if process.owns_group:
            dist.destroy_process_group()


def _train(config: PretrainConfig, dataset, collate, resume: bool, process: Process) -> dict:
    if config.model.input_dim != dataset.feature_dim:
        raise ValueError(f"config.model.input_dim ({config.model.input_dim}) must equal the dataset's "
                         f"feature_dim ({dataset.feature_dim})")
    out_dir = Path(config.out_dir)
    checkpoint_path = out_dir / "checkpoint.pt"
    device = process.device

    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = MaskedAcousticModel(config.model).to(device)
    if config.init_fixed_pattern is not None:
        apply_initialisation(model.encoder, load_initialisation(config.init_fixed_pattern).to(device))
    optimizer = make_optimizer(model, config.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config.optim, config.max_steps))
    # From here on the ranks draw different dropout, masks and crops.
    rank_seed = config.seed + process.rank
    torch.manual_seed(rank_seed)
    random.seed(rank_seed)
    np.random.seed(rank_seed)
    masking_generator = torch.Generator().manual_seed(rank_seed)

    sampler = DistributedSampler(dataset, num_replicas=process.world_size, rank=process.rank, shuffle=True,
                                 seed=config.seed, drop_last=True)
    batches_per_epoch = len(sampler) // config.batch_size
    if batches_per_epoch == 0:
        raise ValueError(f"batch_size ({config.batch_size}) exceeds the utterances per process "
                         f"({len(sampler)} of {len(dataset)})")

    step, seconds_before = 0, 0.0
    if resume and checkpoint_path.exists():
        checkpoint = load_checkpoint(checkpoint_path)
        if checkpoint["config"]["model"] != dataclasses.asdict(config.model):
            raise ValueError(f"config.model differs from the one {checkpoint_path} was trained with: "
                             f"{checkpoint['config']['model']}")
        if checkpoint["batches_per_epoch"] != batches_per_epoch:
            raise ValueError(f"{checkpoint_path} was trained with {checkpoint['batches_per_epoch']} batches per "
                             f"epoch, this dataset and batch_size give {batches_per_epoch}: the data position "
                             f"cannot be restored")
        model.encoder.load_state_dict(checkpoint["encoder"])
        model.head.load_state_dict(checkpoint["head"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        step, seconds_before = checkpoint["step"], checkpoint["seconds"]
        if len(checkpoint["rng"]) == process.world_size:
            restore_rng_state(checkpoint["rng"][process.rank], masking_generator, device)
        elif process.is_main:
            print(f"resuming on {process.world_size} processes from a run on {len(checkpoint['rng'])}: "
                  f"random streams restart, so the run is not bitwise the uninterrupted one", file=sys.stderr)

    if step >= config.max_steps:  # a finished run: leave its files untouched
        return {"out_dir": str(out_dir), "checkpoint": str(checkpoint_path), "step": step,
                "loss": _last_logged_loss(out_dir / "log.jsonl")}

    trained = model if process.world_size == 1 else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=config.mixed_precision and device.type == "cuda")

    logger = RunLog(out_dir, config, step, process.is_main)
    started, window_start, window_frames = time.perf_counter(), time.perf_counter(), 0

    def save():
        states = [None] * process.world_size
        if process.world_size > 1:
            dist.all_gather_object(states, rng_state(masking_generator, device))
        else:
            states[0] = rng_state(masking_generator, device)
        if process.is_main:
            save_checkpoint({"encoder": model.encoder.state_dict(), "head": model.head.state_dict(),
                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "step": step, "config": config_to_dict(config), "rng": states,
                             "batches_per_epoch": batches_per_epoch,
                             "seconds": seconds_before + time.perf_counter() - started}, checkpoint_path)

    model.train()
    try:
        while step < config.max_steps:
            epoch, consumed = divmod(step, batches_per_epoch)
            for batch in epoch_batches(dataset, collate, sampler, config, epoch, consumed):
                features, padding = crop(batch["features"], batch["key_padding_mask"], config.max_frames,
                                         masking_generator)
                corrupted, chosen = mask_frames(features, padding, masking_generator, config.masking)
                features, corrupted, padding, chosen = (t.to(device, non_blocking=True)
                                                        for t in (features, corrupted, padding, chosen))
                with autocast:
                    predicted = trained(corrupted, padding)
                loss = masked_l1(predicted, features, chosen)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.optim.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                step += 1
                window_frames += int((~padding).sum())
                if step % config.log_every == 0 or step == config.max_steps:
                    # The loss beside the trivial predictors' on the same masks (trivial_predictors.py).
                    trivial = trivial_predictors.predictions(features, padding, chosen)
                    losses = torch.stack([loss.detach()] + [masked_l1(trivial[name], features, chosen)
                                                            for name in trivial_predictors.NAMES])
                    if process.world_size > 1:
                        dist.all_reduce(losses, op=dist.ReduceOp.AVG)
                    now = time.perf_counter()
                    mean_loss = losses[0]
                    logger.record({"step": step, "loss": mean_loss.item(), "lr": lr,
                                   **{f"{name}_l1": value.item() for name, value in
                                      zip(trivial_predictors.NAMES, losses[1:])},
                                   "frames_per_s": window_frames * process.world_size / (now - window_start),
                                   "seconds": seconds_before + now - started})
                    window_start, window_frames = now, 0
                logger.advance()
                if step % config.checkpoint_every == 0 or step == config.max_steps:
                    save()
                if step == config.max_steps:
                    break
    finally:
        logger.close()
    return {"out_dir": str(out_dir), "checkpoint": str(checkpoint_path), "step": step,
            "loss": logger.last_loss}


def _last_logged_loss(path: Path) -> float | None:
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1])["loss"] if lines else None


def epoch_batches(dataset, collate, sampler: DistributedSampler, config: PretrainConfig, epoch: int, consumed: int):
    """This process's batches of `epoch` after the first `consumed`: the order depends on
    (seed, epoch) only, and the skipped batches are never loaded."""
    sampler.set_epoch(epoch)
    order = list(sampler)
    batches = [order[start:start + config.batch_size]
               for start in range(0, len(order) - config.batch_size + 1, config.batch_size)]
    # The loader draws its workers' base seed from this generator instead of the global
    # one, which would otherwise shift the dropout stream each time a loader starts.
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    return DataLoader(dataset, batch_sampler=batches[consumed:], collate_fn=collate,
                      num_workers=config.num_workers, generator=generator, pin_memory=torch.cuda.is_available())


class RunLog:
    """Rank 0's outputs: log.jsonl, TensorBoard when installed, and the progress display."""

    def __init__(self, out_dir: Path, config: PretrainConfig, step: int, active: bool):
        self.active, self.progress, self.max_steps, self.last_loss = active, config.progress, config.max_steps, None
        self.bar = self.tensorboard = self.file = None
        if not active:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(out_dir / "config.yaml",
                         lambda file: file.write(yaml.safe_dump(config_to_dict(config), sort_keys=False).encode()))
        path = out_dir / "log.jsonl"
        # A run killed after its last checkpoint logged steps that the resumed run redoes.
        kept = [line for line in path.read_text().splitlines(keepends=True)
                if json.loads(line)["step"] <= step] if step and path.exists() else []
        write_atomically(path, lambda file: file.write("".join(kept).encode()))
        self.file = open(path, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(str(out_dir / "tensorboard"), purge_step=step + 1)
        except ImportError:
            pass
        if config.progress:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=config.max_steps, initial=step, desc="pretrain", dynamic_ncols=True)
            except ImportError:
                pass

    def record(self, entry: dict) -> None:
        self.last_loss = entry["loss"]
        if not self.active:
            return
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for name in ("loss", "lr", "frames_per_s", *(f"{n}_l1" for n in trivial_predictors.NAMES)):
                self.tensorboard.add_scalar(f"pretrain/{name}", entry[name], entry["step"])
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['lr']:.2e}")
        elif self.progress:
            print(f"step {entry['step']}/{self.max_steps} loss {entry['loss']:.4f} lr {entry['lr']:.2e} "
                  f"{entry['frames_per_s']:.0f} frames/s", file=sys.stderr)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        for resource in (self.file, self.tensorboard, self.bar):
            if resource is not None:
                resource.close()


def load_encoder(checkpoint_path: str | os.PathLike, device: str | torch.device = "cpu") -> AudioALBERT:
    """The pre-trained encoder of a checkpoint, in eval mode with gradients off, for
    feature extraction."""
    checkpoint = load_checkpoint(checkpoint_path)
    encoder = AudioALBERT(AudioALBERTConfig(**checkpoint["config"]["model"]))
    encoder.load_state_dict(checkpoint["encoder"])
    return encoder.to(device).eval().requires_grad_(False)


def trained_length(checkpoint_path: str | os.PathLike) -> int | None:
    """The longest input the checkpoint's encoder was trained on (its run's max_frames; None:
    whole utterances): the window to extract its features in (probes.encoder_features)."""
    return load_checkpoint(checkpoint_path)["config"]["max_frames"]

