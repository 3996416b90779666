"""Per-head attention maps of a trained encoder, each cropped to its utterance."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset


@torch.no_grad()
def collect_maps(encoder: nn.Module, dataset, collate, *, utterances: int = 8, layer: int | None = None,
                 batch_size: int = 8, window: int | None = None) -> dict[tuple[int, int], list[torch.Tensor]]:
    """Runs `encoder` (an AudioALBERT, in eval mode, without gradients) with
    output_attentions=True on the first `utterances` items of `dataset`.

    `window`: the longest input the encoder was trained on (pretrain.trained_length); an
    utterance longer than that is cut to its first `window` frames, so that a map shows
    only positions the encoder was trained at (for fixed_pattern and the Synthesizers,
    logits past the crop length never moved from their initial values). None: whole.

    Returns {(layer, head): [map of utterance 0, map of utterance 1, ...]}, keys in layer
    then head order, each map a float32 CPU (T_u, T_u) tensor cropped to that utterance's
    valid frames, so its rows sum to 1. `layer` (0-based) keeps one layer; None keeps all.
    """
    if not (isinstance(utterances, int) and utterances >= 1):
        raise ValueError(f"utterances must be a positive integer, got {utterances!r}")
    if window is not None and not (isinstance(window, int) and window >= 1):
        raise ValueError(f"window must be None or a positive integer, got {window!r}")
    layers = encoder.config.num_layers
    if layer is not None and not (isinstance(layer, int) and 0 <= layer < layers):
        raise ValueError(f"layer must be None or an integer in [0, {layers}), got {layer!r}")
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    maps: dict[tuple[int, int], list[torch.Tensor]] = {}
    chosen = range(layers) if layer is None else [layer]
    subset = Subset(dataset, range(min(utterances, len(dataset))))
    try:
        for items in DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=list):
            batch = collate([_first_frames(item, window) for item in items])
            out = encoder(batch["features"].to(device), batch["key_padding_mask"].to(device), output_attentions=True)
            for index in chosen:
                weights = out.attentions[index].float().cpu()  # (B, H, T, T)
                for heads, length in zip(weights, batch["lengths"].tolist()):
                    for head, weight in enumerate(heads):
                        maps.setdefault((index, head), []).append(weight[:length, :length].clone())
    finally:
        encoder.train(was_training)
    return maps


def _first_frames(item: dict, window: int | None) -> dict:
    """The dataset item with its per-frame fields cut to the first `window` frames."""
    if window is None or len(item["features"]) <= window:
        return item
    return {name: value[:window] if name in ("features", "phones") and value is not None else value
            for name, value in item.items()}
