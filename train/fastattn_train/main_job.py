"""The main job: pre-train tiny Audio ALBERT encoders with `full` and `fixed_pattern`
attention on the bundled eSpeak NG corpus, probe them and the log-mel features with the
paper's four probes, and print a Table 2-style table with each model's training and
inference time.

Everything lands in one working folder and is reused when it is there, so a rerun, or a
run that was interrupted, picks up where it stopped: OUT/corpus (the default corpus),
OUT/features (the feature cache), OUT/runs/<kind> (resumed from its checkpoint),
OUT/probes/<row>.json, and the report, OUT/report.md and OUT/report.json.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from fastattn_train.corpus.build import build_corpus
from fastattn_train.dataset import collate, load_dataset
from fastattn_train.pretrain import load_encoder, pretrain
from fastattn_train.probes import TASKS, ProbeConfig, encoder_features, input_features, run_probes
from fastattn_train.settings import pretrain_config

STEPS = 600  # pre-training steps per model: the tiny config's, about 2.5 minutes each on 2 cores
# The paper's probes, with fewer epochs than ProbeConfig's default so that all three rows
# fit the job's budget on 2 CPU cores.
PROBES = ProbeConfig(max_epochs=8, patience=2)
BASELINE = "log-mel"
COLUMNS = {"speaker_utterance": "speaker (utterance)", "speaker_frame": "speaker (frame)",
           "phone_1hidden": "phoneme (1 hidden)", "phone_2hidden": "phoneme (2 hidden)"}


def run(out: Path, kinds: list[str], *, steps: int = STEPS) -> dict:
    out = Path(out)
    corpus = ensure_corpus(out / "corpus")
    splits = [load_dataset(corpus, split, cache_dir=out / "features") for split in ("train", "dev", "test")]
    longest = max(len(item["features"]) for split in splits for item in split)
    rows = {BASELINE: probe_row(out, BASELINE, lambda: input_features, splits)}
    for kind in kinds:
        print(f"== pre-training {kind} ({steps} steps)", flush=True)
        run_dir, train_seconds = pretrain_kind(out, kind, steps, longest, splits[0])
        rows[kind] = probe_row(out, kind, lambda: encoder_features(load_encoder(run_dir / "checkpoint.pt")), splits)
        rows[kind]["train seconds per step"] = train_seconds / steps
    report = {"rows": rows, "device": _device_name(), "steps": steps, "corpus": str(corpus)}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    text = report_markdown(rows, kinds)
    (out / "report.md").write_text(text)
    print(text)
    return report


def ensure_corpus(root: Path) -> Path:
    """The default corpus at `root`, built unless a finished one (with its manifest) is there."""
    if not (root / "manifest.json").exists():
        if root.exists():  # an interrupted build: start it again
            shutil.rmtree(root)
        print(f"== building the default corpus in {root}", flush=True)
        build_corpus(root)
    return root


def pretrain_kind(out: Path, kind: str, steps: int, longest: int, train) -> tuple[Path, float]:
    """Pre-trains (or resumes) the tiny model with attention `kind`; returns its folder and
    training seconds. Kinds with weights over positions get max_len = the longest utterance,
    so the probes can run them on whole utterances."""
    overrides = [f"model.attention={kind}", f"max_steps={steps}", "progress=false"]
    if kind in ("fixed_pattern", "synth_random", "synth_dense", "synth_dense_m"):
        cropped = pretrain_config("tiny").max_frames or longest
        overrides.append(f"model.max_len={max(longest, cropped)}")
    config = pretrain_config("tiny", overrides)
    config.out_dir = str(out / "runs" / kind)
    pretrain(config, train, collate)
    checkpoint = torch.load(Path(config.out_dir) / "checkpoint.pt", weights_only=True)
    return Path(config.out_dir), float(checkpoint["seconds"])


def probe_row(out: Path, name: str, make_extractor, splits) -> dict:
    """The four probe accuracies of one row, and the seconds to extract the test split's
    features (the model's inference time), cached in OUT/probes/<name>.json."""
    path = out / "probes" / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    print(f"== probing {name}", flush=True)
    started = time.perf_counter()
    results = run_probes(make_extractor(), *splits, collate, PROBES)
    row = {**results["test"], "inference seconds (test split)": results["extraction_seconds"]["test"],
           "probe seconds": time.perf_counter() - started}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=1) + "\n")
    return row


def report_markdown(rows: dict, kinds: list[str]) -> str:
    """Table 2's layout (test accuracy), plus each model's times, and what the phoneme
    probes say against log-mel."""
    lines = ["| features | " + " | ".join(COLUMNS.values()) + " | train s/step | inference s (test split) |",
             "|---|" + "---|" * (len(COLUMNS) + 2)]
    for name, row in rows.items():
        cells = [_accuracy(row.get(task)) for task in TASKS]
        step = row.get("train seconds per step")
        cells += ["-" if step is None else f"{step:.3f}", f"{row['inference seconds (test split)']:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", *phoneme_verdicts(rows, kinds), ""]
    return "\n".join(lines)


def phoneme_verdicts(rows: dict, kinds: list[str]) -> list[str]:
    """One plain sentence per model: did its features beat log-mel on both phoneme probes?"""
    baseline = rows[BASELINE]
    verdicts = []
    for kind in kinds:
        worse = [COLUMNS[t] for t in ("phone_1hidden", "phone_2hidden")
                 if rows[kind].get(t) is None or rows[kind][t] <= baseline[t]]
        verdicts.append(f"{kind}: pre-trained features beat log-mel on both phoneme probes." if not worse else
                        f"{kind}: pre-trained features did NOT beat log-mel on {' and '.join(worse)}.")
    return verdicts


def _accuracy(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU, {torch.get_num_threads()} threads"
