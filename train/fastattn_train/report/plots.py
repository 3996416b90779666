"""The report's pictures: accuracy against time (the paper's Figure 5), the pre-training
loss curves, and every head's attention map of one model on one utterance. matplotlib is
imported only here; a bare Figure renders with Agg, so no global backend is switched."""

from __future__ import annotations

import io
from pathlib import Path

import torch

PALETTE_COLOURS = 64  # plenty for a colour map: noisy attention maps stay under 250 KB
MAP_PIXELS = 160  # a map is drawn at most this many pixels a side (one head's panel at 80 dpi)
SMOOTHING = 5  # logged steps per moving average of the loss curves: one batch's loss is noisy


def _figure(**kwargs):
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("the report's plots need matplotlib: pip install matplotlib") from error
    return Figure(**kwargs)


def kind_colour(index: int) -> tuple:
    """A distinct colour for each of up to 20 kinds: tab20's strong shades first, then its
    light ones, so that the first ten kinds never share a hue."""
    from matplotlib import colormaps

    return colormaps["tab20"]((2 * index) % 20 + (2 * index // 20) % 2)


def _save(figure, path: Path, dpi: int, *, palette: bool = False) -> None:
    """Saves `figure` as a PNG; with `palette`, in PALETTE_COLOURS colours (Pillow comes with
    matplotlib): a third of the size for the noisy attention maps, so that reports stay small
    enough to commit, at the cost of shifting the few colours of line and scatter plots."""
    if not palette:
        figure.savefig(path, dpi=dpi, bbox_inches="tight")
        return
    from PIL import Image

    rendered = io.BytesIO()
    figure.savefig(rendered, format="png", dpi=dpi, bbox_inches="tight")
    rendered.seek(0)
    Image.open(rendered).convert("RGB").quantize(colors=PALETTE_COLOURS).save(path, format="png", optimize=True)


def plot_accuracy_against_time(accuracy: dict, timing: dict, path: Path, *, task: str = "speaker_utterance",
                               baseline: str | None = None) -> None:
    """Figure 5: `task` accuracy (mean, with the seeds' standard deviation as error bars)
    against the training-step and the inference time of each kind in `timing`; the
    `baseline` row of `accuracy` (the log-mel features, which take no time) as a dashed line.
    The upper left corner is best: accurate and fast."""
    figure = _figure(figsize=(11, 4.5))
    for axes, measure, title in zip(figure.subplots(1, 2), ("train_step_s", "inference_s"),
                                    ("training step", "inference")):
        for index, (kind, row) in enumerate(timing.items()):
            value = accuracy[kind][task]
            if value is None:
                continue
            milliseconds = row[measure] * 1e3
            axes.errorbar(milliseconds, value["mean"], yerr=value["std"], fmt="o", capsize=3,
                          color=kind_colour(index))
            axes.annotate(kind, (milliseconds, value["mean"]), textcoords="offset points", xytext=(5, 4),
                          fontsize="small")
        if baseline is not None and accuracy[baseline][task] is not None:
            axes.axhline(accuracy[baseline][task]["mean"], color="grey", linestyle="--", label=baseline)
            axes.legend(fontsize="small", loc="lower right")
        axes.set(xlabel=f"{title} time (ms per batch)", ylabel=f"{task.replace('_', ' ')} accuracy",
                 title=f"Accuracy against {title} time")
        axes.grid(alpha=0.3)
    _save(figure, path, dpi=100)


def plot_loss_curves(curves: dict[str, list[list[tuple[int, float]]]], path: Path, *,
                     references: dict[str, list[tuple[int, float]]] | None = None) -> None:
    """Pre-training loss against step, as a moving average over SMOOTHING logged steps (the
    runs of a seed see the same batches, so the raw curves mostly show which batches were
    hard); one colour per kind, one line per seed, the legend beside the plot. `references`
    (name: points, the trivial predictors' L1 on one run's batches) are drawn dashed, grey."""
    figure = _figure(figsize=(9, 4.5))
    axes = figure.subplots()

    def smoothed(points):
        window = min(SMOOTHING, len(points))  # a short run is averaged over what it logged
        steps, losses = torch.tensor(points, dtype=torch.float64).T
        kernel = torch.full((1, 1, window), 1.0 / window, dtype=torch.float64)
        averaged = torch.nn.functional.conv1d(losses[None, None], kernel)[0, 0]
        return steps[window - 1:], averaged

    for index, (kind, runs) in enumerate(curves.items()):
        for seed, points in enumerate(runs):
            if points:
                steps, averaged = smoothed(points)
                axes.plot(steps, averaged, marker="." if len(averaged) == 1 else None,
                          color=kind_colour(index), alpha=1.0 if seed == 0 else 0.4, label=kind if seed == 0 else None)
    for style, (name, points) in zip(("--", ":"), (references or {}).items()):
        if points:
            axes.plot(*smoothed(points), linestyle=style, color="grey", label=f"{name.replace('_', ' ')} (trivial)")
    axes.set(xlabel="step", ylabel="masked L1 loss",
             title=f"Pre-training loss (moving average of {SMOOTHING} logged steps)")
    axes.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    axes.grid(alpha=0.3)
    _save(figure, path, dpi=100)


def plot_attention_maps(maps: dict[tuple[int, int], torch.Tensor], title: str, path: Path, *,
                        roles: dict[tuple[int, int], str] | None = None) -> None:
    """Every head's map (rows: layers, columns: heads) of one utterance: `maps` is
    {(layer, head): (T, T) map}, query frames down, key frames across; `roles` names each
    head's role under its map. Maps longer than MAP_PIXELS frames are max-pooled to
    MAP_PIXELS a side first, so that a line one frame wide (a diagonal, a sparse column)
    stays visible instead of falling between pixels."""
    layers = sorted({layer for layer, _ in maps})
    heads = sorted({head for _, head in maps})
    figure = _figure(figsize=(2.2 * len(heads), 2.2 * len(layers) + 0.6), layout="constrained")
    grid = figure.subplots(len(layers), len(heads), squeeze=False)
    for row, layer in enumerate(layers):
        for column, head in enumerate(heads):
            axes = grid[row][column]
            attention = maps[(layer, head)].float()
            if attention.shape[-1] > MAP_PIXELS:
                attention = torch.nn.functional.adaptive_max_pool2d(attention[None], MAP_PIXELS)[0]
            axes.imshow(attention.numpy(), cmap="viridis", interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            if row == 0:
                axes.set_title(f"head {head}", fontsize="small")
            if column == 0:
                axes.set_ylabel(f"layer {layer}", fontsize="small")
            if roles is not None:
                axes.set_xlabel(roles[(layer, head)], fontsize="small")
    figure.suptitle(title)
    _save(figure, path, dpi=80, palette=True)
