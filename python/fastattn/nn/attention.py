"""`SelfAttention`: multi-head self-attention of any kind, a drop-in for
`torch.nn.MultiheadAttention` in self-attention.

The module owns what every kind shares (the packed input projection, the head split,
dropout, the output projection, argument checks, the MultiheadAttention call); a kind's
mechanism maps (B, H, T, D) heads to (out, weights or None). A mechanism declares which
projections it reads (`projected`: "qkv", "qv" or "v"), whether it drops attention
probabilities itself (`drops_probabilities`; otherwise the module drops its output), and
`needs_max_len` when it learns weights over key positions.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastattn.nn.dense import FullAttention, SharedQKAttention
from fastattn.nn.fixed_pattern import FixedPatternSynthesizer
from fastattn.nn.lsh import LSHAttention
from fastattn.nn.performer import PerformerAttention
from fastattn.nn.sparse import FixedSparseAttention, LocalGlobalAttention, StridedAttention
from fastattn.nn.synthesizer import DenseSynthesizer, RandomSynthesizer

# kind -> (mechanism class, the constructor arguments the kind fixes). The options of a
# kind are its class's keyword-only arguments less the fixed ones.
MECHANISMS = {
    "full": (FullAttention, {}),
    "shared_qk": (SharedQKAttention, {}),
    "strided": (StridedAttention, {}),
    "fixed": (FixedSparseAttention, {}),
    **{scheme: (LSHAttention, {"scheme": scheme})
       for scheme in ("sign_alsh", "xbox", "xbox_qnf", "simple_lsh", "simple_alsh")},
    "synth_dense": (DenseSynthesizer, {"per_head": False}),
    "synth_dense_m": (DenseSynthesizer, {"per_head": True}),
    "synth_random": (RandomSynthesizer, {}),
    "fixed_pattern": (FixedPatternSynthesizer, {}),
    "performer": (PerformerAttention, {}),
    "local_global": (LocalGlobalAttention, {}),
}
KINDS = tuple(MECHANISMS)


def kind_options(kind: str) -> dict[str, object]:
    """The options `kind` takes and their defaults."""
    cls, fixed = _mechanism(kind)
    parameters = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY and p.name not in fixed}


def needs_max_len(kind: str) -> bool:
    """Whether `kind` learns weights over key positions and so must be built with max_len."""
    return bool(getattr(_mechanism(kind)[0], "needs_max_len", False))


def _mechanism(kind: object):
    if kind not in MECHANISMS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    return MECHANISMS[kind]


class SelfAttention(nn.Module):
    """Multi-head self-attention whose mechanism is one of `KINDS` (SPEC section 6).

    Args:
        embed_dim: E, the model width; num_heads: H, dividing E (head size D = E / H).
        kind: one of `KINDS` (default "full"); its options are keyword arguments
            (`kind_options(kind)` lists them with their defaults); an unknown one raises
            TypeError.
        max_len: the longest T accepted. Required by the kinds with weights over key
            positions (synth_dense, synth_dense_m, synth_random, fixed_pattern); optional
            elsewhere (None: any T). The sparse pattern kinds build their pattern once at
            max_len when given one.
        dropout: dropout probability. The kinds that form the probabilities (full,
            shared_qk, synth_dense, synth_dense_m) drop attention probabilities, as
            MultiheadAttention does; the others (whose kernels never form them) drop the
            attended values (B, H, T, D) before the output projection.
        bias: biases in the input and output projections.
        batch_first: inputs (B, T, E) when True (the default), (T, B, E) when False.

    The parameters are named as MultiheadAttention's: `in_proj_weight` packs the q, k, v
    projections the kind reads (in that order), so `full` loads a MultiheadAttention state
    dict as it is.
    """

    def __init__(self, embed_dim: int, num_heads: int, kind: str = "full", *, max_len: int | None = None,
                 dropout: float = 0.0, bias: bool = True, batch_first: bool = True, **options):
        super().__init__()
        cls, fixed = _mechanism(kind)
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if max_len is not None and not (isinstance(max_len, int) and max_len >= 1):
            raise ValueError(f"max_len must be a positive integer or None, got {max_len!r}")
        if max_len is None and needs_max_len(kind):
            raise ValueError(f"kind {kind!r} learns weights over key positions: pass max_len (the longest T)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        allowed = kind_options(kind)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            takes = ", ".join(allowed) or "no options"
            raise TypeError(f"unknown option(s) {', '.join(unknown)} for kind {kind!r}; it takes {takes}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kind, self.max_len, self.dropout, self.batch_first = kind, max_len, dropout, batch_first
        self.mechanism = cls(num_heads, self.head_dim, max_len, **fixed, **options)
        self.projected = self.mechanism.projected
        self.in_proj_weight = nn.Parameter(torch.empty(len(self.projected) * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(len(self.projected) * embed_dim)) if bias else None
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        # MultiheadAttention's initialisation.
        nn.init.xavier_uniform_(self.in_proj_weight)
        if bias:
            nn.init.zeros_(self.out_proj.bias)

    # torch.nn.TransformerEncoder(Layer) reads this (with batch_first, in_proj_bias and
    # num_heads) to decide whether its fused MultiheadAttention kernel may replace
    # self_attn.forward in eval; False keeps every kind, `full` included, on this forward.
    _qkv_same_embed_dim = False

    def extra_repr(self) -> str:
        return f"{self.embed_dim}, {self.num_heads}, kind={self.kind!r}, max_len={self.max_len}"

    def forward(self, query, key=None, value=None, key_padding_mask=None, need_weights: bool = False,
                attn_mask=None, average_attn_weights: bool = False, is_causal: bool = False):
        """Self-attention of `query`.

        Called as ``attn(x, key_padding_mask=None, need_weights=False)`` or as
        MultiheadAttention is, ``attn(x, x, x, key_padding_mask=..., need_weights=...)``,
        where key and value must be the query itself. A bool tensor as the second
        positional argument (and no value) is the key_padding_mask.

        Args:
            query: (B, T, E), or (T, B, E) when batch_first is False.
            key_padding_mask: (B, T), True = padding (or a float additive mask, as
                TransformerEncoderLayer passes it, where -inf = padding).
            need_weights: also return the dense (B, H, T, T) attention probabilities
                (before dropout; 0 on the keys a kind does not attend to).
            average_attn_weights: average the weights over the heads, (B, T, T)
                (default False; MultiheadAttention's default is True).
            attn_mask, is_causal: not supported (each kind defines its own pattern);
                accepted for the MultiheadAttention call, they must be None and False.

        Returns:
            (out shaped like query, weights or None).
        """
        key_padding_mask = _self_attention_call(query, key, value, key_padding_mask, attn_mask, is_causal)
        key_padding_mask = self._check(query, key_padding_mask)
        x = query if self.batch_first else query.transpose(0, 1)
        batch, length, _ = x.shape
        packed = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        heads = packed.unflatten(-1, (len(self.projected), self.num_heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        named = dict(zip(self.projected, heads))  # each (B, H, T, D)
        dropout_p = self.dropout if self.training else 0.0
        extra = {"dropout_p": dropout_p} if self.mechanism.drops_probabilities else {}
        out, weights = self.mechanism(named.get("q"), named.get("k"), named["v"], key_padding_mask, need_weights,
                                      **extra)
        if not self.mechanism.drops_probabilities:
            out = F.dropout(out, dropout_p)
        out = self.out_proj(out.transpose(1, 2).flatten(2))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None:
            weights = weights.expand(batch, self.num_heads, length, length)
            weights = weights.mean(1) if average_attn_weights else weights.contiguous()
        return out, weights

    def _check(self, x, key_padding_mask):
        """Checks the query and returns the key padding mask as bool (B, T) or None."""
        layout = "(B, T, E)" if self.batch_first else "(T, B, E)"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"query must be a torch.Tensor {layout}, got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(f"query must have 3 dimensions {layout}, got shape {tuple(x.shape)}")
        if x.shape[-1] != self.embed_dim:
            raise ValueError(f"query must have embed_dim = {self.embed_dim} features in its last dimension, "
                             f"got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"query must be a float tensor, got {x.dtype}")
        batch, length = x.shape[:2] if self.batch_first else (x.shape[1], x.shape[0])
        if self.max_len is not None and length > self.max_len:
            raise ValueError(f"sequence length T = {length} exceeds max_len = {self.max_len} of this {self.kind} "
                             f"attention")
        if key_padding_mask is None:
            return None
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.shape != (batch, length):
            shape = tuple(key_padding_mask.shape) if isinstance(key_padding_mask, torch.Tensor) else key_padding_mask
            raise ValueError(f"key_padding_mask must be a (B, T) = ({batch}, {length}) tensor, got {shape!r}")
        if key_padding_mask.device != x.device:
            raise ValueError(f"key_padding_mask must be on the device of query ({x.device}), "
                             f"got {key_padding_mask.device}")
        if key_padding_mask.dtype == torch.bool:
            return key_padding_mask
        if key_padding_mask.is_floating_point():
            return torch.isneginf(key_padding_mask)
        raise TypeError(f"key_padding_mask must be bool (True = padding) or float (additive, -inf = padding), "
                        f"got {key_padding_mask.dtype}")


def _self_attention_call(query, key, value, key_padding_mask, attn_mask, is_causal):
    """The key_padding_mask of either call form; refuses what is not self-attention."""
    if key is not None and value is None and isinstance(key, torch.Tensor) and key.dtype == torch.bool:
        if key_padding_mask is not None:
            raise TypeError("key_padding_mask given twice: as the second positional argument and by name")
        key, key_padding_mask = None, key
    if not ((key is None and value is None) or (key is query and value is query)):
        raise ValueError("SelfAttention computes self-attention: key and value must be the query tensor "
                         "itself (or omitted)")
    if attn_mask is not None or is_causal:
        raise ValueError("attn_mask and is_causal are not supported: each kind defines its own key pattern; "
                         "use key_padding_mask for padding")
    return key_padding_mask
