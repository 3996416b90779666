"""The report's pictures: accuracy against time (the paper's Figure 5), the pre-training
loss curves, and every head's attention map of one model on one utterance. matplotlib is
imported only here; a bare Figure renders with Agg, so no global backend is switched."""

from __future__ import annotations

from pathlib import Path

import torch


def _figure(**kwargs):
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("the report's plots need matplotlib: pip install matplotlib") from error
    return Figure(**kwargs)


def plot_accuracy_against_time(accuracy: dict, timing: dict, path: Path, *, task: str = "speaker_utterance",
                               baseline: str | None = None) -> None:
    """Figure 5: `task` accuracy (mean, with the seeds' standard deviation as error bars)
    against the training-step and the inference time of each kind in `timing`; the
    `baseline` row of `accuracy` (the log-mel features, which take no time) as a dashed line.
    The upper left corner is best: accurate and fast."""
    figure = _figure(figsize=(11, 4.5))
    for axes, measure, title in zip(figure.subplots(1, 2), ("train_step_s", "inference_s"),
                                    ("training step", "inference")):
        for kind, row in timing.items():
            value = accuracy[kind][task]
            if value is None:
                continue
            milliseconds = row[measure] * 1e3
            axes.errorbar(milliseconds, value["mean"], yerr=value["std"], fmt="o", capsize=3)
            axes.annotate(kind, (milliseconds, value["mean"]), textcoords="offset points", xytext=(5, 4),
                          fontsize="small")
        if baseline is not None and accuracy[baseline][task] is not None:
            axes.axhline(accuracy[baseline][task]["mean"], color="grey", linestyle="--", label=baseline)
            axes.legend(fontsize="small", loc="lower right")
        axes.set(xlabel=f"{title} time (ms per batch)", ylabel=f"{task.replace('_', ' ')} accuracy",
                 title=f"Accuracy against {title} time")
        axes.grid(alpha=0.3)
    figure.savefig(path, dpi=120, bbox_inches="tight")


def plot_loss_curves(curves: dict[str, list[list[tuple[int, float]]]], path: Path) -> None:
    """Pre-training loss against step, one colour per kind, one line per seed."""
    figure = _figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for index, (kind, runs) in enumerate(curves.items()):
        colour = f"C{index % 10}"
        for seed, points in enumerate(runs):
            if points:
                steps, losses = zip(*points)
                axes.plot(steps, losses, color=colour, alpha=1.0 if seed == 0 else 0.4,
                          label=kind if seed == 0 else None)
    axes.set(xlabel="step", ylabel="masked L1 loss", yscale="log", title="Pre-training loss")
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3, which="both")
    figure.savefig(path, dpi=120, bbox_inches="tight")


def plot_attention_maps(maps: dict[tuple[int, int], torch.Tensor], title: str, path: Path, *,
                        roles: dict[tuple[int, int], str] | None = None) -> None:
    """Every head's map (rows: layers, columns: heads) of one utterance: `maps` is
    {(layer, head): (T, T) map}, query frames down, key frames across; `roles` names each
    head's role under its map."""
    layers = sorted({layer for layer, _ in maps})
    heads = sorted({head for _, head in maps})
    figure = _figure(figsize=(2.2 * len(heads), 2.2 * len(layers) + 0.6), layout="constrained")
    grid = figure.subplots(len(layers), len(heads), squeeze=False)
    for row, layer in enumerate(layers):
        for column, head in enumerate(heads):
            axes = grid[row][column]
            axes.imshow(maps[(layer, head)].numpy(), cmap="viridis", interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            if row == 0:
                axes.set_title(f"head {head}", fontsize="small")
            if column == 0:
                axes.set_ylabel(f"layer {layer}", fontsize="small")
            if roles is not None:
                axes.set_xlabel(roles[(layer, head)], fontsize="small")
    figure.suptitle(title)
    figure.savefig(path, dpi=100, bbox_inches="tight")
