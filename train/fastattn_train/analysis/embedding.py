"""A 2-D picture of many attention maps (the paper's Fig. 4): every map pooled to one size,
PCA, then t-SNE; scikit-learn and matplotlib are imported only here, when asked for."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def embed_maps(maps, *, size: int = 32, pca_dims: int = 20, perplexity: float = 30.0, method: str = "exact",
               seed: int = 0):
    """(N, 2) numpy t-SNE coordinates of `maps`, a sequence of N >= 3 (T_n, T_n) maps of any T_n.

    Each map is adaptive-average-pooled to (size, size) so maps of different lengths compare;
    PCA to min(pca_dims, N) dimensions drops the pixel noise before t-SNE, whose perplexity
    is capped at (N - 1) / 3 so few maps still work. `method` is TSNE's: "exact" (O(N^2))
    is quick for the hundreds of maps of one analysis and, unlike "barnes_hut", starts no
    OpenMP pool (which took 10 s for 12 maps on a busy 2-core CPU); use "barnes_hut" for
    many thousands.
    """
    try:
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE
    except ImportError as error:
        raise ImportError("embed_maps needs scikit-learn: pip install scikit-learn") from error
    maps = list(maps)
    if len(maps) < 3:
        raise ValueError(f"maps must hold at least 3 maps for t-SNE, got {len(maps)}")
    pooled = torch.stack([F.adaptive_avg_pool2d(m.float()[None, None], size).flatten() for m in maps]).numpy()
    reduced = PCA(n_components=min(pca_dims, *pooled.shape), random_state=seed).fit_transform(pooled)
    return TSNE(n_components=2, perplexity=min(perplexity, (len(maps) - 1) / 3), init="pca",
                method=method, random_state=seed).fit_transform(reduced)


def plot_embedding(points, head_labels, path) -> None:
    """Scatter of `points` (N, 2), one colour per distinct label in `head_labels` (N strings,
    e.g. "layer 0 head 3" or a role), saved to `path` (format from its suffix)."""
    try:
        from matplotlib.figure import Figure  # a bare Figure renders with Agg, no global backend switch
    except ImportError as error:
        raise ImportError("plot_embedding needs matplotlib: pip install matplotlib") from error
    head_labels = list(head_labels)
    if len(head_labels) != len(points):
        raise ValueError(f"head_labels must have one label per point ({len(points)}), got {len(head_labels)}")
    figure = Figure(figsize=(6, 6))
    axes = figure.subplots()
    for label in dict.fromkeys(head_labels):
        chosen = [i for i, other in enumerate(head_labels) if other == label]
        axes.scatter(points[chosen, 0], points[chosen, 1], s=12, label=label)
    axes.set(xlabel="t-SNE 1", ylabel="t-SNE 2", title="Attention maps")
    axes.legend(fontsize="small", markerscale=1.5)
    figure.savefig(path, dpi=120, bbox_inches="tight")
