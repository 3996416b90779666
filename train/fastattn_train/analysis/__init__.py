"""The attention-map analysis of the paper's section 4.3: collect a trained encoder's
per-head maps, sort each head into the four fixed-pattern roles, embed the maps in 2-D
for a t-SNE plot, and export the roles found as a fixed_pattern initialisation."""

from .embedding import embed_maps, plot_embedding
from .head_roles import classify_head, classify_heads, head_statistics
from .initialisation import (apply_initialisation, fixed_pattern_initialisation, load_initialisation,
                             save_initialisation)
from .maps import collect_maps
from .run import analyse

__all__ = [
    "collect_maps", "classify_head", "classify_heads", "head_statistics", "embed_maps", "plot_embedding",
    "fixed_pattern_initialisation", "save_initialisation", "load_initialisation", "apply_initialisation", "analyse",
]
