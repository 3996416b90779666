"""`fastattn report`: pre-train one encoder per attention kind (and seed), probe each, time
each, and write the comparison the paper draws (Tables 1 and 2, Figure 5) into one folder.

Everything is kept in the report folder OUT and reused when it is there, so a rerun, or a run
that was interrupted, picks up where it stopped and never redoes finished work that is still
valid (the cheap head roles, pictures and tables are redrawn each time):

    OUT/corpus/                       the default corpus, when no corpus is given
    OUT/data.json                     which corpus and features the folder holds; another is refused
    OUT/features/                     the feature cache
    OUT/runs/<kind>/seed<s>/          each pre-training run (resumed from its checkpoint; more
                                      --steps continue it, on the schedule of the new length);
                                      on a CPU several run at once, one process each (parallel.py)
    OUT/probes/<row>/seed<s>.json     each row's probe results (redone for a new checkpoint or
                                      other probe settings)
    OUT/timing/<kind>.json            each kind's Table 1 times (redone when the settings, the
                                      device or the software changed)
    OUT/report.md, OUT/report.json    the tables
    OUT/accuracy_vs_time.png, OUT/loss_curves.png, OUT/attention_maps/<kind>.png

The report also sorts every head of each kind's first model into the paper's four roles
(diagonal, increasing, decreasing, sparse: its section 4.3), to set beside the paper's
finding for a trained full model and the fixed pattern's 5 : 1 : 1 : 5.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import fastattn
from fastattn.nn import KINDS, AudioALBERT, needs_max_len
from fastattn.nn.fixed_pattern import head_roles
from fastattn.timing import encoder_workloads, machine, median_time
from fastattn_train import trivial_predictors
from fastattn_train.analysis import classify_heads, collect_maps
from fastattn_train.checkpoint import load_checkpoint, write_atomically
from fastattn_train.corpus.build import build_corpus
from fastattn_train.dataset import collate, load_dataset
from fastattn_train.features import FeatureSettings
from fastattn_train.pretrain import config_to_dict, load_encoder, pretrain, trained_length
from fastattn_train.probes import (ProbeConfig, encoder_features, extract_splits, input_features, layer_of,
                                   probe_device, probe_extracted)
from fastattn_train.settings import pretrain_config

from .parallel import default_jobs, pretrain_all
from .plots import SMOOTHING, plot_accuracy_against_time, plot_attention_maps, plot_loss_curves
from .summary import BASELINE, accuracy_table, markdown, timing_table, weighted_row

TIMING_WARMUP = 2
MAP_UTTERANCES = 8  # test utterances whose maps vote on each head's role
# Keys the report sets itself for every run; an override of one would mislabel the rows.
RESERVED = ("model.attention", "seed", "max_steps", "out_dir")
# Config keys a finished run may differ in from a rerun's without its results going stale.
UNRELATED_TO_RESULTS = ("max_steps", "out_dir", "progress", "num_workers", "log_every", "checkpoint_every")


def cpu_probes() -> ProbeConfig:
    """The probes a CPU report runs by default: the paper's, with at most 4 epochs (patience 2)
    at a peak learning rate of 5e-3 decayed to 0, so that a row takes under 2 minutes on 2
    cores; pass ProbeConfig() for the full schedule. On one tiny model these 4 epochs beat 8
    at a constant 1e-3 on every probe (test accuracy 0.767 / 0.677 / 0.873 / 0.917 against
    0.708 / 0.663 / 0.858 / 0.901) in half the time, and 5 epochs from 3e-3 on three of
    four; on log-mel they tie or beat 5 from 3e-3."""
    return ProbeConfig(max_epochs=4, patience=2, lr=5e-3)


@dataclass
class ReportSettings:
    out: Path  # the report folder; a rerun resumes from it
    kinds: tuple[str, ...]  # attention kinds of fastattn.nn.KINDS, in the tables' order
    corpus: Path | None = None  # a LibriSpeech-layout corpus; None: the default one, built in OUT/corpus
    config: str = "tiny"  # a bundled config name or a YAML path
    overrides: tuple[str, ...] = ()  # KEY=VALUE config overrides applied to every run
    steps: int | None = None  # pre-training steps per model; None: the config's max_steps
    seeds: int = 1  # runs per kind (and probe seeds per row), for mean and spread
    probes: ProbeConfig = field(default_factory=cpu_probes)
    timing_length: int = 500  # T of the Table 1 timing (the paper's)
    timing_batch: int | None = None  # B of the timing; None: the config's batch_size
    timing_reps: int = 5  # timed calls per measurement, median reported
    deltas: bool = False  # log-mel with deltas (240 features)
    jobs: int | None = None  # pre-training runs at once, in processes; None: parallel.default_jobs

    def __post_init__(self):
        self.out = Path(self.out)
        self.kinds = tuple(self.kinds)
        self.overrides = tuple(self.overrides)
        if not self.kinds:
            raise ValueError("kinds must name at least one attention kind")
        unknown = [kind for kind in self.kinds if kind not in KINDS]
        if unknown:
            raise ValueError(f"unknown attention kind(s) {', '.join(map(repr, unknown))}; kinds are "
                             f"{', '.join(KINDS)} (or 'all')")
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"kinds must not repeat a kind, got {', '.join(self.kinds)}")
        for name in ("seeds", "timing_length", "timing_reps"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("steps", "timing_batch", "jobs"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        reserved = [o for o in self.overrides if o.partition("=")[0] in RESERVED]
        if reserved:
            raise ValueError(f"overrides may not set {', '.join(RESERVED)} (the report sets them per run: use "
                             f"kinds, seeds, steps and out); got {', '.join(reserved)}")


def parse_kinds(text: str) -> tuple[str, ...]:
    """'all' or a comma-separated list of kinds, as the command line gives them."""
    return KINDS if text.strip() == "all" else tuple(kind.strip() for kind in text.split(",") if kind.strip())


class Progress:
    """One line per stage on stderr: its number of all, the time so far, and what runs."""

    def __init__(self, total: int):
        self.total, self.done, self.started = total, 0, time.perf_counter()

    def stage(self, text: str) -> None:
        self.done += 1
        elapsed = int(time.perf_counter() - self.started)
        print(f"[report {self.done}/{self.total}, {elapsed // 60}:{elapsed % 60:02d}] {text}", file=sys.stderr,
              flush=True)


def run_report(settings: ReportSettings) -> dict:
    """Runs (or resumes) every stage and writes the report; returns what report.json holds."""
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    kinds, seeds = settings.kinds, range(settings.seeds)
    jobs = settings.jobs or default_jobs(probe_device(settings.probes), len(kinds) * settings.seeds)
    progress = Progress(1 + settings.seeds + 1 + len(kinds) * (3 * settings.seeds + 2) + 1)

    progress.stage("corpus and features")
    corpus = settings.corpus or ensure_corpus(out / "corpus")
    features = FeatureSettings(deltas=settings.deltas)
    splits = [load_dataset(corpus, split, features, cache_dir=out / "features") for split in ("train", "dev", "test")]
    claim_folder(out, corpus, features, splits)
    # The model reads the features these settings give, whatever the config says.
    overrides = (f"model.input_dim={splits[0].feature_dim}", *settings.overrides)
    base = pretrain_config(settings.config, list(overrides))
    longest = max(len(item["features"]) for split in splits for item in split)
    if base.model.max_len is not None and base.model.max_len < longest:
        raise ValueError(f"model.max_len = {base.model.max_len} is below the longest utterance ({longest} frames), "
                         f"which the probes run whole: raise it or leave it out")
    device = probe_device(settings.probes)

    per_seed = {BASELINE: []}
    for seed in seeds:
        progress.stage(f"{BASELINE}, seed {seed}: probing")
        per_seed[BASELINE].append(probe_row(
            out, BASELINE, seed, None, lambda: extract_splits(input_features, *splits, collate, settings.probes),
            splits[0], settings.probes)["test"])
    unfinished = [(kind, seed) for kind in kinds for seed in seeds
                  if not finished(out / "runs" / kind / f"seed{seed}", settings.steps or base.max_steps)]
    parallel = jobs > 1 and len(unfinished) > 1
    progress.stage(f"pre-training: {len(unfinished)} of {len(kinds) * settings.seeds} models to train, "
                   + (f"{jobs} at a time" if parallel else "each at its stage below"))
    if parallel:
        pretrain_all(jobs, unfinished, functools.partial(
            _pretrain_in_worker, out=out, corpus=corpus, features=features, config_name=settings.config,
            overrides=overrides, steps=settings.steps, base=base, longest=longest))
    runs, timing, roles, maps, layer_weights = {}, {}, {}, {}, {}
    for kind in kinds:
        weighted = weighted_row(kind)
        per_seed[kind], per_seed[weighted], runs[kind], layer_weights[kind] = [], [], [], []
        for seed in seeds:
            progress.stage(f"{kind}, seed {seed}: pre-training")
            run = pretrain_run(out, kind, seed, settings.config, overrides, settings.steps, base, longest, splits[0])
            runs[kind].append(run)
            progress.stage(f"{kind}, seed {seed}: probing")
            checkpoint = run["dir"] / "checkpoint.pt"
            # Features in windows of the pre-training crops: positions the encoder was trained at.
            window = trained_length(checkpoint)
            trained = {"step": run["step"], "seconds": run["seconds"], "window": window}
            # One extraction of every layer serves both rows (the last layer is one of them).
            every_layer = functools.cache(lambda: extract_splits(
                encoder_features(load_encoder(checkpoint, device), "weighted", window=window), *splits, collate,
                settings.probes))
            per_seed[kind].append(probe_row(out, kind, seed, trained, lambda: layer_of(every_layer(), -1), splits[0],
                                            settings.probes)["test"])
            progress.stage(f"{kind}, seed {seed}: probing a learned weighted sum of its layers")
            result = probe_row(out, f"{kind}-weighted", seed, trained, every_layer, splits[0], settings.probes)
            per_seed[weighted].append(result["test"])
            layer_weights[kind].append(result["layer_weights"])
        progress.stage(f"{kind}: timing a training step and inference at T = {settings.timing_length}")
        timing[kind] = time_kind(out, kind, runs[kind][0]["model"], settings, base.batch_size)
        progress.stage(f"{kind}: head roles and attention maps")
        first_checkpoint = runs[kind][0]["dir"] / "checkpoint.pt"
        roles[kind], maps[f"attention maps, {kind}"] = head_roles_and_maps(
            out, kind, load_encoder(first_checkpoint, device), splits[2], trained_length(first_checkpoint))

    progress.stage("tables and plots")
    accuracy = accuracy_table(per_seed)
    times = timing_table(timing, runs)
    plot_accuracy_against_time(accuracy, times, out / "accuracy_vs_time.png", baseline=BASELINE)
    plot_loss_curves({kind: [run["losses"] for run in runs[kind]] for kind in kinds}, out / "loss_curves.png",
                     references=runs[kinds[0]][0]["trivial"])
    report = {
        "setup": setup(settings, base, corpus, splits, runs),
        "accuracy": accuracy,
        "timing": times,
        "pretraining": {kind: [{"seed": seed, "step": run["step"], "seconds": run["seconds"],
                                "final_loss": run["losses"][-1][1] if run["losses"] else None,
                                **against_trivial_predictors(run)}
                               for seed, run in enumerate(runs[kind])] for kind in kinds},
        "probes": per_seed,
        "layer_weights": layer_weights,
        "head_roles": roles,
        "plots": {"accuracy against time (Figure 5)": "accuracy_vs_time.png", "pre-training loss": "loss_curves.png",
                  **maps},
    }
    write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    write_text(out / "report.md", markdown(report))
    return report


def claim_folder(out: Path, corpus: Path, features: FeatureSettings, splits) -> None:
    """Records in OUT/data.json a fingerprint of the data the folder's runs, probes and
    timings come from (the utterances of each split, the labels, the feature settings and
    the training split's feature statistics, which sum up all of its audio), and refuses a
    rerun on other data, whose results the cached ones would silently stand for."""
    def digest(*parts) -> str:
        hashed = hashlib.sha1()
        for part in parts:
            hashed.update(part if isinstance(part, bytes) else "\n".join(part).encode())
        return hashed.hexdigest()[:16]

    train = splits[0]
    data = {"utterances": {name: digest([item.id for item in split.utterances])
                           for name, split in zip(("train", "dev", "test"), splits)},
            "labels": digest(train.speakers, train.phones),
            "features": features.key(),
            "statistics": digest(*(array.tobytes() for array in train.statistics))}
    path = out / "data.json"
    if path.exists():
        recorded = json.loads(path.read_text())
        if recorded != data:
            changed = ", ".join(key for key in data if recorded.get(key) != data[key])
            raise ValueError(f"{out} holds a report on other data than {corpus} (its {changed} differ from "
                             f"{path}): use another --out, or delete the folder to start again")
        return
    write_text(path, json.dumps(data, indent=1) + "\n")


def ensure_corpus(root: Path) -> Path:
    """The default corpus at `root`, built unless a finished one (with its manifest) is there."""
    if not (root / "manifest.json").exists():
        if root.exists():  # an interrupted build: start it again
            shutil.rmtree(root)
        build_corpus(root)
    return root


def pretrain_run(out: Path, kind: str, seed: int, config_name: str, overrides, steps: int | None, base,
                 longest: int, train_dataset) -> dict:
    """Pre-trains (or resumes, or finds finished) one model; returns its folder, step,
    training seconds, model config and loss curve. Kinds with weights over positions get
    max_len = the longest utterance (or crop), so the probes can run them on whole
    utterances; an override of model.max_len wins."""
    run_overrides = [f"model.max_len={max(longest, base.max_frames or longest)}"] if needs_max_len(kind) else []
    run_overrides += [*overrides, f"model.attention={kind}", f"seed={base.seed + seed}"]
    if steps is not None:
        run_overrides.append(f"max_steps={steps}")
    config = pretrain_config(config_name, run_overrides)
    run_dir = out / "runs" / kind / f"seed{seed}"
    config.out_dir = str(run_dir)
    if (run_dir / "checkpoint.pt").exists():
        check_same_run(run_dir, config)
    pretrain(config, train_dataset, collate)
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    if checkpoint["step"] > config.max_steps:
        print(f"{run_dir} ran {checkpoint['step']} steps, more than the {config.max_steps} asked for: it is reported "
              f"as it is", file=sys.stderr)
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    return {"dir": run_dir, "step": checkpoint["step"], "seconds": float(checkpoint["seconds"]),
            "model": config.model, "losses": [(entry["step"], entry["loss"]) for entry in log],
            "trivial": {name: [(entry["step"], entry[f"{name}_l1"]) for entry in log if f"{name}_l1" in entry]
                        for name in trivial_predictors.NAMES}}


def finished(run_dir: Path, steps: int) -> bool:
    """Whether a run's checkpoint has reached `steps`."""
    path = run_dir / "checkpoint.pt"
    return path.exists() and load_checkpoint(path)["step"] >= steps


def _pretrain_in_worker(kind: str, seed: int, threads: int, *, out: Path, corpus: Path, features: FeatureSettings,
                        config_name: str, overrides, steps: int | None, base, longest: int) -> None:
    """pretrain_run in a process of parallel.pretrain_all, on `threads` torch threads, with the
    train split loaded from the report's feature cache."""
    torch.set_num_threads(threads)
    train = load_dataset(corpus, "train", features, cache_dir=out / "features")
    pretrain_run(out, kind, seed, config_name, overrides, steps, base, longest, train)


def against_trivial_predictors(run: dict) -> dict:
    """The run's masked L1 over its last logged steps (up to SMOOTHING of them) beside the
    trivial predictors' on the same batches and masks, and whether it beat each; empty for
    a run logged before they were."""
    last = {name: points[-SMOOTHING:] for name, points in run["trivial"].items()}
    if not run["losses"] or any(len(points) != len(run["losses"][-SMOOTHING:]) for points in last.values()):
        return {}
    recent = sum(loss for _, loss in run["losses"][-SMOOTHING:]) / len(run["losses"][-SMOOTHING:])
    trivial = {name: sum(value for _, value in points) / len(points) for name, points in last.items()}
    return {"recent_loss": recent, "recent_trivial_l1": trivial,
            "beats": {name: recent < value for name, value in trivial.items()}}


def check_same_run(run_dir: Path, config) -> None:
    """Refuses to resume or reuse a run trained with other settings (learning rate, masking,
    crops, ...) than `config`'s, which the report would otherwise present as this config's."""
    trained = load_checkpoint(run_dir / "checkpoint.pt")["config"]
    wanted = config_to_dict(config)
    changed = [f"{key}: {trained.get(key)!r} -> {wanted[key]!r}" for key in wanted
               if key not in UNRELATED_TO_RESULTS and trained.get(key) != wanted[key]]
    if changed:
        raise ValueError(f"{run_dir} was trained with other settings ({'; '.join(changed)}): delete it to train "
                         f"again, or use another --out")


def probe_row(out: Path, name: str, seed: int, checkpoint: dict | None, make_splits, train,
              probes: ProbeConfig) -> dict:
    """probe_extracted's results for one row and seed ("test" holds the four accuracies) on
    the splits make_splits() extracts, cached in OUT/probes/<name>/seed<seed>.json with the
    checkpoint ({"step", "seconds", "window"}, None for log-mel) and probe settings they came
    from, and redone when either differs."""
    seeded = dataclasses.replace(probes, seed=probes.seed + seed)
    path = out / "probes" / name / f"seed{seed}.json"
    wanted = {"checkpoint": checkpoint, "probes": dataclasses.asdict(seeded)}
    if path.exists():
        cached = json.loads(path.read_text())
        if {key: cached.get(key) for key in wanted} == wanted:
            return cached
    results = probe_extracted(make_splits(), train, seeded)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps({**wanted, **results}, indent=1) + "\n")
    return {**wanted, **results}


def time_kind(out: Path, kind: str, model_config, settings: ReportSettings, batch_size: int) -> dict:
    """Median seconds of a training step and of inference of a freshly initialised encoder
    built like the kind's runs (the times do not depend on the weights), at T =
    settings.timing_length, in float32; cached in OUT/timing/<kind>.json with its settings,
    device and software versions."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    length, batch = settings.timing_length, settings.timing_batch or batch_size
    if model_config.max_len is not None and model_config.max_len < length:  # the timed length must fit
        model_config = dataclasses.replace(model_config, max_len=length)
    wanted = {"length": length, "batch": batch, "reps": settings.timing_reps, "warmup": TIMING_WARMUP,
              "device": machine(device), "model": dataclasses.asdict(model_config), "torch": torch.__version__,
              "fastattn": fastattn.__version__, "built_with_cuda": fastattn.built_with_cuda}
    path = out / "timing" / f"{kind}.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if {key: cached.get(key) for key in wanted} == wanted:
            return cached
    torch.manual_seed(0)
    model = AudioALBERT(model_config).to(device)
    features = torch.randn(batch, length, model_config.input_dim, device=device)
    training_step, inference = encoder_workloads(model, features)
    measured = {**wanted,
                "train_step_s": median_time(training_step, warmup=TIMING_WARMUP, reps=settings.timing_reps,
                                            device=device),
                "inference_s": median_time(inference, warmup=TIMING_WARMUP, reps=settings.timing_reps, device=device)}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(measured, indent=1) + "\n")
    return measured


def head_roles_and_maps(out: Path, kind: str, encoder: AudioALBERT, test,
                        window: int | None) -> tuple[dict[str, list[str]], str]:
    """The section 4.3 analysis of one model: every head's role in every layer (majority over
    the first MAP_UTTERANCES test utterances, each cut to the `window` frames the model was
    trained on, fastattn_train.analysis.classify_heads), and OUT/attention_maps/<kind>.png
    with every head's map of the first test utterance, titled by role. Returns ({layer:
    roles}, the picture's path relative to OUT)."""
    maps = collect_maps(encoder, test, collate, utterances=MAP_UTTERANCES, window=window)
    layers, heads = encoder.config.num_layers, encoder.config.num_heads
    roles = {str(layer): classify_heads(maps[(layer, head)] for head in range(heads)) for layer in range(layers)}
    path = Path("attention_maps") / f"{kind}.png"
    (out / path.parent).mkdir(parents=True, exist_ok=True)
    plot_attention_maps({key: head_maps[0] for key, head_maps in maps.items()},
                        f"{kind}: attention maps on {test[0]['id']}", out / path,
                        roles={(int(layer), head): role for layer, layer_roles in roles.items()
                               for head, role in enumerate(layer_roles)})
    return roles, str(path)


def setup(settings: ReportSettings, base, corpus: Path, splits, runs: dict[str, list[dict]]) -> dict:
    """What ran, for the report's header: date, device, versions, corpus, model, the steps the
    runs reached, probes, timing, and what the head-role analysis compares with."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = base.model
    probes = settings.probes
    steps = sorted({run["step"] for kind_runs in runs.values() for run in kind_runs})
    given_init = any(override.startswith("init_fixed_pattern=") for override in settings.overrides)
    return {
        "date": datetime.date.today().isoformat(),
        "device": machine(device),
        "torch": torch.__version__,
        "fastattn": fastattn.__version__,
        "corpus": {"name": "the default eSpeak NG corpus" if settings.corpus is None else Path(corpus).resolve().name,
                   "path": "corpus/ in the report folder" if settings.corpus is None else str(corpus),
                   "utterances": {name: len(split) for name, split in zip(("train", "dev", "test"), splits)}},
        "config": settings.config,
        "overrides": list(settings.overrides),
        "model": f"{model.num_layers} shared layers, hidden {model.hidden_size}, {model.num_heads} heads, "
                 f"FFN {model.ffn_size}",
        "steps": steps[0] if len(steps) == 1 else steps,
        "seeds": settings.seeds,
        "kinds": list(settings.kinds),
        "probes": f"at most {probes.max_epochs} epochs, patience {probes.patience}, phoneme hidden size "
                  f"{probes.hidden_size}, Adam lr {probes.lr} ({probes.decay}), batches of "
                  f"{probes.utterance_batch_size} utterances or {probes.frame_batch_size} frames",
        "timing": {"length": settings.timing_length, "batch": settings.timing_batch or base.batch_size,
                   "reps": settings.timing_reps, "warmup": TIMING_WARMUP},
        "map_utterances": min(MAP_UTTERANCES, len(splits[2])),
        "fixed_pattern_start": None if given_init else head_roles(model.num_heads),
    }


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda file: file.write(text.encode()))
