"""`fastattn analyse`: the whole section 4.3 analysis of one trained encoder, into a folder."""

from __future__ import annotations

import json
from pathlib import Path

from .embedding import embed_maps, plot_embedding
from .head_roles import classify_heads
from .initialisation import fixed_pattern_initialisation, save_initialisation
from .maps import collect_maps


def analyse(encoder, dataset, collate, out_dir, *, utterances: int = 8, layer: int | None = None,
            max_len: int = 1500, window: int | None = None) -> dict:
    """Collects every head's maps on the first `utterances` of `dataset` (each cut to its
    first `window` frames, the length the encoder was trained on: collect_maps), classifies
    the heads of every layer (majority over the utterances), and writes to `out_dir`:
    roles.json (the roles of `layer`, default the last, and of every layer), heads.png (the
    t-SNE of all maps, coloured by head) and fixed_pattern_init.pt (fixed_pattern logits of
    size `max_len` following the roles of `layer`, for PretrainConfig.init_fixed_pattern).
    Returns what roles.json holds."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layers, heads = encoder.config.num_layers, encoder.config.num_heads
    layer = layers - 1 if layer is None else layer
    maps = collect_maps(encoder, dataset, collate, utterances=utterances, window=window)
    per_layer = {index: classify_heads(maps[(index, head)] for head in range(heads)) for index in range(layers)}
    summary = {
        "layer": layer,
        "roles": per_layer[layer],
        "roles_per_layer": {str(index): roles for index, roles in per_layer.items()},
    }
    (out_dir / "roles.json").write_text(json.dumps(summary, indent=1) + "\n")
    every_map = [m for head_maps in maps.values() for m in head_maps]
    labels = [f"head {head}" for (_, head), head_maps in maps.items() for _ in head_maps]
    plot_embedding(embed_maps(every_map), labels, out_dir / "heads.png")
    save_initialisation(fixed_pattern_initialisation(per_layer[layer], max_len), out_dir / "fixed_pattern_init.pt")
    return summary
