"""The report's numbers and words: per-seed results reduced to mean and spread, the paper's
Table 2 and Table 1 layouts as Markdown, and the paper's own numbers beside ours."""

from __future__ import annotations

import statistics

from fastattn.nn.fixed_pattern import ROLES
from fastattn_train.probes import TASKS

BASELINE = "log-mel"
COLUMNS = {"speaker_utterance": "speaker (utterance)", "speaker_frame": "speaker (frame)",
           "phone_1hidden": "phoneme (1 hidden)", "phone_2hidden": "phoneme (2 hidden)"}

# The paper's Table 2 (LibriSpeech, 6-layer Audio ALBERT of hidden size 768 pre-trained for
# 500k steps), in COLUMNS order, for the rows it shares with fastattn's kinds.
PAPER_ACCURACY = {
    BASELINE: (0.0060, 0.0033, 0.5246, 0.5768),
    "full": (0.9926, 0.9824, 0.6460, 0.6887),
    "fixed_pattern": (0.9842, 0.9855, 0.6157, 0.6492),
}
# The paper's Table 1: practical inference time at T = 500 (its unit; only ratios compare).
# It has one sparse row and a range over its five LSH/ALSH rows.
PAPER_INFERENCE = {"full": 146.8, "strided": 143.4, "fixed": 143.4, "synth_dense": 111.0, "synth_random": 116.8,
                   "fixed_pattern": 116.8}
PAPER_LSH_INFERENCE = (235.0, 269.0)
LSH_KINDS = ("sign_alsh", "xbox", "xbox_qnf", "simple_lsh", "simple_alsh")


def weighted_row(kind: str) -> str:
    """The Table 2 row of `kind`'s probes on a learned weighted sum of its layers."""
    return f"{kind} (weighted layers)"


def spread(values: list[float | None]) -> dict | None:
    """{"mean", "std" (the sample standard deviation; 0 for one value), "values"}, or None
    when any value is missing (a phoneme probe on a corpus without phone labels)."""
    if not values or any(value is None for value in values):
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": list(values)}


def accuracy_table(per_seed: dict[str, list[dict]]) -> dict[str, dict[str, dict | None]]:
    """{row: [one {task: accuracy} per seed]} -> {row: {task: spread}}."""
    return {row: {task: spread([result[task] for result in results]) for task in TASKS}
            for row, results in per_seed.items()}


def timing_table(timing: dict[str, dict], pretraining: dict[str, list[dict]]) -> dict[str, dict]:
    """Each kind's measured step times, as seconds and as ratios to `full` (when it ran), the
    paper's inference ratio where the paper has the kind, and its runs' pre-training wall time."""
    full = timing.get("full")
    rows = {}
    for kind, measured in timing.items():
        row = {"train_step_s": measured["train_step_s"], "inference_s": measured["inference_s"],
               "train_vs_full": None, "inference_vs_full": None,
               "paper_inference_vs_full": paper_inference_ratio(kind),
               "pretraining_s": spread([run["seconds"] for run in pretraining[kind]])}
        if full is not None:
            row["train_vs_full"] = measured["train_step_s"] / full["train_step_s"]
            row["inference_vs_full"] = measured["inference_s"] / full["inference_s"]
        rows[kind] = row
    return rows


def paper_inference_ratio(kind: str) -> float | tuple[float, float] | None:
    """The paper's Table 1 inference time of `kind` over its baseline's: a number, a (low,
    high) range for the LSH kinds, or None where the paper has no such row."""
    if kind in LSH_KINDS:
        return tuple(value / PAPER_INFERENCE["full"] for value in PAPER_LSH_INFERENCE)
    return PAPER_INFERENCE[kind] / PAPER_INFERENCE["full"] if kind in PAPER_INFERENCE else None


def phoneme_verdicts(accuracy: dict[str, dict[str, dict | None]], kinds: list[str]) -> list[str]:
    """One plain sentence per kind: did its features beat log-mel on both phoneme probes (in
    the mean over seeds; the tables give the spread)?"""
    baseline = accuracy[BASELINE]
    phone_tasks = ("phone_1hidden", "phone_2hidden")
    if any(baseline[task] is None for task in phone_tasks):
        return ["Phoneme probes: not measured (the corpus has no phone labels)."]
    verdicts = []
    for kind in kinds:
        worse = [COLUMNS[task] for task in phone_tasks if accuracy[kind][task]["mean"] <= baseline[task]["mean"]]
        verdicts.append(f"{kind}: pre-trained features beat log-mel on both phoneme probes." if not worse else
                        f"{kind}: pre-trained features did NOT beat log-mel on {' and '.join(worse)}.")
    return verdicts


def markdown(report: dict) -> str:
    """report.md: what ran, Table 2 and Table 1 in the paper's layouts, the head roles, the
    paper's numbers, and the plots."""
    sections = [_header(report["setup"]), _accuracy_section(report), _trivial_section(report),
                _timing_section(report), _roles_section(report), _paper_section(), _plots_section(report)]
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def _header(setup: dict) -> list[str]:
    seeds, steps = setup["seeds"], setup["steps"]
    spread_note = (f"mean ± sample standard deviation over {seeds} seeds (pre-training and probe seeds)"
                   if seeds > 1 else "one seed; rerun with --seeds N for the spread")
    steps = f"{steps} steps per model" if isinstance(steps, int) else f"runs of {', '.join(map(str, steps))} steps"
    utterances = " / ".join(str(n) for n in setup["corpus"]["utterances"].values())
    return [f"# Attention kinds compared on {setup['corpus']['name']}", "",
            f"{setup['date']}, {setup['device']}, torch {setup['torch']}, fastattn {setup['fastattn']}.", "",
            f"- Corpus: {setup['corpus']['path']}, utterances train / dev / test {utterances}.",
            f"- Pre-training: config `{setup['config']}` ({setup['model']}), {steps}.",
            f"- Probes: {setup['probes']}.",
            f"- Accuracy: test split, {spread_note}."]


def _table(header: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]


def _accuracy_section(report: dict) -> list[str]:
    lines = ["## Probe accuracy (the paper's Table 2 layout)", "",
             "Each kind's row probes its last layer; the row below it, a softmax-weighted sum of all its layers "
             "(embedding included) learned with each probe, as s3prl's featurizer does.", "",
             *_table(["features", *COLUMNS.values()])]
    lines += [f"| {row} | " + " | ".join(_accuracy(tasks[task]) for task in TASKS) + " |"
              for row, tasks in report["accuracy"].items()]
    rows = [row for kind in report["setup"]["kinds"] for row in (kind, weighted_row(kind))]
    return lines + ["", *phoneme_verdicts(report["accuracy"], rows), "", *_layer_weights(report)]


def _layer_weights(report: dict) -> list[str]:
    """Where each kind's weighted sum puts its weight: the mean over seeds of each layer's
    learned weight, per probe, and the heaviest layer."""
    lines = ["Learned layer weights (mean over seeds; layer 0 is the embedding), heaviest layer in bold:", ""]
    for kind, per_seed in report.get("layer_weights", {}).items():
        for task in TASKS:
            runs = [weights[task] for weights in per_seed if weights.get(task) is not None]
            if not runs:
                continue
            mean = [statistics.fmean(layer) for layer in zip(*runs)]
            heaviest = max(range(len(mean)), key=mean.__getitem__)
            shown = ", ".join(f"**{w:.2f}**" if layer == heaviest else f"{w:.2f}" for layer, w in enumerate(mean))
            lines.append(f"- {kind}, {COLUMNS[task]}: {shown}")
    return lines


def _trivial_section(report: dict) -> list[str]:
    """Each run's masked L1 at its end against predictors that need no model."""
    rows = [(kind, run) for kind, runs in report["pretraining"].items() for run in runs if "beats" in run]
    if not rows:
        return ["## Pre-training against trivial predictors", "",
                "Not available: these runs were logged without the trivial predictors."]
    names = list(rows[0][1]["recent_trivial_l1"])
    lines = ["## Pre-training against trivial predictors", "",
             "Masked L1 over each run's last logged steps, and on the same batches and masks that of predictors "
             "without a model: each utterance's mean seen frame, and a straight line across each masked span. "
             "A model that does not beat them has learned no more than averaging or bridging the gap.", "",
             *_table(["kind", "seed", "model L1", *(name.replace("_", " ") + " L1" for name in names),
                      "beats both"])]
    lines += [f"| {kind} | {run['seed']} | {run['recent_loss']:.3f} | "
              + " | ".join(f"{run['recent_trivial_l1'][name]:.3f}" for name in names)
              + f" | {'yes' if all(run['beats'].values()) else 'no'} |" for kind, run in rows]
    return lines


def _timing_section(report: dict) -> list[str]:
    setup = report["setup"]
    timing = setup["timing"]
    paper_length = " (the paper's Table 1 length)" if timing["length"] == 500 else ""
    lines = ["## Time per kind (the paper's Table 1 layout)", "",
             f"A float32 training step (forward, backward, SGD update) and inference pass (no gradients) of a batch "
             f"of B = {timing['batch']} utterances of T = {timing['length']} frames{paper_length} on "
             f"{setup['device']}: medians of {timing['reps']} after {timing['warmup']} warm-up. Ratios are kind / "
             f"full (below 1 is faster); the paper's is its inference time over its baseline's. Pre-training is the "
             f"seconds of each run's training loop (summed over resumes; bf16 autocast on CUDA).", "",
             *_table(["kind", "train step ms", "train / full", "inference ms", "inference / full",
                      "paper inference / full", "pre-training s"])]
    lines += [f"| {kind} | {row['train_step_s'] * 1e3:.1f} | {_ratio(row['train_vs_full'])} | "
              f"{row['inference_s'] * 1e3:.1f} | {_ratio(row['inference_vs_full'])} | "
              f"{_ratio(row['paper_inference_vs_full'])} | {_seconds(row['pretraining_s'])} |"
              for kind, row in report["timing"].items()]
    return lines


def _roles_section(report: dict) -> list[str]:
    setup = report["setup"]
    start = setup["fixed_pattern_start"]
    start = ("the paper's proportions, here " + " : ".join(str(start.count(role)) for role in ROLES)
             if start is not None else "the initialisation given (init_fixed_pattern)")
    lines = ["## Head roles (the paper's section 4.3)", "",
             f"Each head of each kind's first model sorted into the roles {', '.join(ROLES)} by "
             f"`fastattn_train.analysis.classify_head` (majority over {setup['map_utterances']} test utterances): "
             f"heads per role, per layer. The paper found 2 diagonal and 3 sparse heads among the 12 of its trained "
             f"baseline, the others increasing or decreasing; fixed_pattern starts from {start}.", "",
             *_table(["kind", "layer", *ROLES])]
    lines += [f"| {kind} | {layer} | " + " | ".join(str(roles.count(role)) for role in ROLES) + " |"
              for kind, layers in report["head_roles"].items() for layer, roles in layers.items()]
    return lines


def _paper_section() -> list[str]:
    lines = ["## The paper's Table 2, for orientation", "",
             "LibriSpeech, a 6-layer Audio ALBERT of hidden size 768 pre-trained for 500k steps: far more data, "
             "model and training than a CPU run, so compare orderings, not values.", "",
             *_table(["features", *COLUMNS.values()])]
    return lines + [f"| {row} (paper) | " + " | ".join(f"{value:.4f}" for value in values) + " |"
                    for row, values in PAPER_ACCURACY.items()]


def _plots_section(report: dict) -> list[str]:
    return ["## Plots", "", *[f"![{title}]({path})" for title, path in report["plots"].items()]]


def _accuracy(value: dict | None) -> str:
    if value is None:
        return "-"
    return f"{value['mean']:.4f}" if len(value["values"]) == 1 else f"{value['mean']:.4f} ± {value['std']:.4f}"


def _ratio(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (tuple, list)):  # a range; report.json holds it as a list
        return f"{value[0]:.2f}-{value[1]:.2f}"
    return f"{value:.2f}"


def _seconds(value: dict | None) -> str:
    if value is None:
        return "-"
    digits = 0 if value["mean"] >= 10 else 1
    text = f"{value['mean']:.{digits}f}"
    return text if len(value["values"]) == 1 else f"{text} ± {value['std']:.{digits}f}"
