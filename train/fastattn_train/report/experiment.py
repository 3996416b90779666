"""`fastattn report`: pre-train one encoder per attention kind (and seed), probe each, time
each, and write the comparison the paper draws (Tables 1 and 2, Figure 5) into one folder.

Everything is kept in the report folder OUT and reused when it is there, so a rerun, or a run
that was interrupted, picks up where it stopped and never redoes finished work:

    OUT/corpus/                       the default corpus, when no corpus is given
    OUT/features/                     the feature cache
    OUT/runs/<kind>/seed<s>/          each pre-training run (resumed from its checkpoint)
    OUT/probes/<row>/seed<s>.json     each row's probe results (redone if its checkpoint moved on)
    OUT/timing/<kind>.json            each kind's Table 1 times (redone if the settings changed)
    OUT/report.md, OUT/report.json    the tables
    OUT/accuracy_vs_time.png, OUT/loss_curves.png, OUT/attention_maps/<kind>.png

The report also sorts every head of each kind's first model into the paper's four roles
(diagonal, increasing, decreasing, sparse: its section 4.3), to set beside the paper's
finding for a trained full model and the fixed pattern's 5 : 1 : 1 : 5.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import fastattn
from fastattn.nn import KINDS, AudioALBERT, needs_max_len
from fastattn.timing import encoder_workloads, machine, median_time
from fastattn_train.analysis import classify_heads, collect_maps
from fastattn_train.checkpoint import load_checkpoint, write_atomically
from fastattn_train.corpus.build import build_corpus
from fastattn_train.dataset import collate, load_dataset
from fastattn_train.features import FeatureSettings
from fastattn_train.pretrain import load_encoder, pretrain
from fastattn_train.probes import ProbeConfig, encoder_features, input_features, run_probes
from fastattn_train.settings import pretrain_config

from .plots import plot_accuracy_against_time, plot_attention_maps, plot_loss_curves
from .summary import BASELINE, accuracy_table, markdown, timing_table

TIMING_WARMUP = 2
MAP_UTTERANCES = 8  # test utterances whose maps vote on each head's role
# Keys the report sets itself for every run; an override of one would mislabel the rows.
RESERVED = ("model.attention", "seed", "max_steps", "out_dir")


def cpu_probes() -> ProbeConfig:
    """The probes a CPU report runs by default: the paper's, with at most 8 epochs (patience 2)
    so that a row takes minutes on 2 cores; pass ProbeConfig() for the full schedule."""
    return ProbeConfig(max_epochs=8, patience=2)


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
        for name in ("steps", "timing_batch"):
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
    base = pretrain_config(settings.config, list(settings.overrides))
    progress = Progress(1 + settings.seeds + len(kinds) * (2 * settings.seeds + 2) + 1)

    progress.stage("corpus and features")
    corpus = settings.corpus or ensure_corpus(out / "corpus")
    features = FeatureSettings(deltas=settings.deltas)
    splits = [load_dataset(corpus, split, features, cache_dir=out / "features") for split in ("train", "dev", "test")]
    longest = max(len(item["features"]) for split in splits for item in split)

    per_seed = {BASELINE: []}
    for seed in seeds:
        progress.stage(f"{BASELINE}, seed {seed}: probing")
        per_seed[BASELINE].append(probe_row(out, BASELINE, seed, None, lambda: input_features, splits,
                                            settings.probes))
    runs, timing, roles, plots = {}, {}, {}, {}
    for kind in kinds:
        per_seed[kind], runs[kind] = [], []
        for seed in seeds:
            progress.stage(f"{kind}, seed {seed}: pre-training")
            run = pretrain_run(out, kind, seed, settings, base, longest, splits[0])
            runs[kind].append(run)
            progress.stage(f"{kind}, seed {seed}: probing")
            checkpoint = run["dir"] / "checkpoint.pt"
            per_seed[kind].append(probe_row(out, kind, seed, run["step"],
                                            lambda: encoder_features(load_encoder(checkpoint)), splits,
                                            settings.probes))
        progress.stage(f"{kind}: timing a training step and inference at T = {settings.timing_length}")
        timing[kind] = time_kind(out, kind, runs[kind][0]["model"], settings, base.batch_size)
        progress.stage(f"{kind}: head roles and attention maps")
        roles[kind], plots[f"attention maps, {kind}"] = head_roles_and_maps(
            out, kind, runs[kind][0]["dir"] / "checkpoint.pt", splits[2])

    progress.stage("tables and plots")
    accuracy = accuracy_table(per_seed)
    report = {
        "setup": setup(settings, base, corpus, splits),
        "accuracy": accuracy,
        "timing": timing_table(timing, {kind: runs[kind] for kind in kinds}),
        "pretraining": {kind: [{"seed": seed, "step": run["step"], "seconds": run["seconds"],
                                "final_loss": run["losses"][-1][1] if run["losses"] else None}
                               for seed, run in enumerate(runs[kind])] for kind in kinds},
        "probes": per_seed,
        "head_roles": roles,
        "plots": {},
    }
    plot_accuracy_against_time(accuracy, report["timing"], out / "accuracy_vs_time.png", baseline=BASELINE)
    plot_loss_curves({kind: [run["losses"] for run in runs[kind]] for kind in kinds}, out / "loss_curves.png")
    report["plots"] = {"accuracy against time (Figure 5)": "accuracy_vs_time.png",
                       "pre-training loss": "loss_curves.png", **plots}
    write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    write_text(out / "report.md", text)
    return report


def ensure_corpus(root: Path) -> Path:
    """The default corpus at `root`, built unless a finished one (with its manifest) is there."""
    if not (root / "manifest.json").exists():
        if root.exists():  # an interrupted build: start it again
            shutil.rmtree(root)
        build_corpus(root)
    return root


def pretrain_run(out: Path, kind: str, seed: int, settings: ReportSettings, base, longest: int, train) -> dict:
    """Pre-trains (or resumes, or finds finished) one model; returns its folder, step,
    seconds, model config and loss curve. Kinds with weights over positions get max_len =
    the longest utterance (or crop), so the probes can run them on whole utterances; an
    override of model.max_len wins."""
    overrides = [f"model.max_len={max(longest, base.max_frames or longest)}"] if needs_max_len(kind) else []
    overrides += [*settings.overrides, f"model.attention={kind}", f"seed={base.seed + seed}"]
    if settings.steps is not None:
        overrides.append(f"max_steps={settings.steps}")
    config = pretrain_config(settings.config, overrides)
    config.out_dir = str(out / "runs" / kind / f"seed{seed}")
    pretrain(config, train, collate)
    run_dir = Path(config.out_dir)
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    return {"dir": run_dir, "step": checkpoint["step"], "seconds": float(checkpoint["seconds"]),
            "model": config.model, "losses": [(entry["step"], entry["loss"]) for entry in log]}


def probe_row(out: Path, name: str, seed: int, step: int | None, make_extractor, splits, probes: ProbeConfig) -> dict:
    """The four probe accuracies on the test split of one row and seed, cached in
    OUT/probes/<name>/seed<seed>.json together with the checkpoint step and probe settings
    they came from, and redone when either differs."""
    probes = dataclasses.replace(probes, seed=probes.seed + seed)
    path = out / "probes" / name / f"seed{seed}.json"
    wanted = {"checkpoint_step": step, "probes": dataclasses.asdict(probes)}
    if path.exists():
        cached = json.loads(path.read_text())
        if {key: cached.get(key) for key in wanted} == wanted:
            return cached["test"]
    results = run_probes(make_extractor(), *splits, collate, probes)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps({**wanted, **results}, indent=1) + "\n")
    return results["test"]


def time_kind(out: Path, kind: str, model_config, settings: ReportSettings, batch_size: int) -> dict:
    """Median seconds of a training step and of inference of a freshly initialised encoder
    built like the kind's runs (the times do not depend on the weights), at T =
    settings.timing_length; cached in OUT/timing/<kind>.json with its settings."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    length, batch = settings.timing_length, settings.timing_batch or batch_size
    if needs_max_len(kind):  # position weights must cover the timed length
        model_config = dataclasses.replace(model_config, max_len=max(model_config.max_len or 0, length))
    wanted = {"length": length, "batch": batch, "reps": settings.timing_reps, "warmup": TIMING_WARMUP,
              "device": machine(device), "model": dataclasses.asdict(model_config)}
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


def head_roles_and_maps(out: Path, kind: str, checkpoint: Path, test) -> tuple[dict[str, list[str]], str]:
    """The section 4.3 analysis of one model: every head's role in every layer (majority over
    the first MAP_UTTERANCES test utterances, fastattn_train.analysis.classify_heads), and
    OUT/attention_maps/<kind>.png with every head's map of the first test utterance, titled
    by role. Returns ({layer: roles}, the picture's path relative to OUT)."""
    encoder = load_encoder(checkpoint)
    maps = collect_maps(encoder, test, collate, utterances=MAP_UTTERANCES)
    layers, heads = encoder.config.num_layers, encoder.config.num_heads
    roles = {str(layer): classify_heads(maps[(layer, head)] for head in range(heads)) for layer in range(layers)}
    path = Path("attention_maps") / f"{kind}.png"
    (out / path.parent).mkdir(parents=True, exist_ok=True)
    plot_attention_maps({key: head_maps[0] for key, head_maps in maps.items()},
                        f"{kind}: attention maps on {test[0]['id']}", out / path,
                        roles={(int(layer), head): role for layer, layer_roles in roles.items()
                               for head, role in enumerate(layer_roles)})
    return roles, str(path)


def setup(settings: ReportSettings, base, corpus: Path, splits) -> dict:
    """What ran, for the report's header: date, device, versions, corpus, model, probes, timing."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = base.model
    probes = settings.probes
    return {
        "date": datetime.date.today().isoformat(),
        "device": machine(device),
        "torch": torch.__version__,
        "fastattn": fastattn.__version__,
        "corpus": {"name": Path(corpus).resolve().name, "path": str(corpus),
                   "utterances": {name: len(split) for name, split in zip(("train", "dev", "test"), splits)}},
        "config": settings.config,
        "overrides": list(settings.overrides),
        "model": f"{model.num_layers} shared layers, hidden {model.hidden_size}, {model.num_heads} heads, "
                 f"FFN {model.ffn_size}",
        "steps": settings.steps or base.max_steps,
        "seeds": settings.seeds,
        "kinds": list(settings.kinds),
        "probes": f"at most {probes.max_epochs} epochs, patience {probes.patience}, phoneme hidden size "
                  f"{probes.hidden_size}, Adam lr {probes.lr}",
        "timing": {"length": settings.timing_length, "batch": settings.timing_batch or base.batch_size,
                   "reps": settings.timing_reps, "warmup": TIMING_WARMUP},
    }


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda file: file.write(text.encode()))
