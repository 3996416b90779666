"""Audio ALBERT (Chi et al. 2020), the paper's encoder: an input projection of the frame
features, sinusoidal positions, and N post-LN transformer layers that share one set of
weights (ALBERT's cross-layer sharing), with the attention kind set per config.

`ALBERTEncoder` is the part after the input projection: it takes (B, T, hidden)
embeddings from any front end (an nn.Embedding of text or SMILES tokens works as well as
audio frames), and `AudioALBERT` also passes `inputs_embeds` straight to it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastattn.nn.attention import SelfAttention


@dataclass
class AudioALBERTConfig:
    """The encoder's sizes; the defaults are the paper's (6 shared layers, hidden 768,
    12 heads, FFN 3072, GELU, dropout 0.1). `AudioALBERTConfig.tiny()` is a CPU-sized one."""

    input_dim: int = 80  # features per frame: 80-bin log-mel (240 with deltas)
    hidden_size: int = 768
    num_layers: int = 6
    num_heads: int = 12
    ffn_size: int = 3072
    dropout: float = 0.1  # on embeddings, attention, and both residual branches
    share_layers: bool = True  # ALBERT: one layer's weights applied num_layers times
    attention: str = "full"  # one of fastattn.nn.KINDS
    attention_options: dict = field(default_factory=dict)  # that kind's options
    max_len: int | None = None  # longest T; required by the synth_* and fixed_pattern kinds
    layer_norm_eps: float = 1e-12  # BERT's and Audio ALBERT's
    # wav2vec 2.0's convolutional positions, for models too small or too briefly trained to
    # learn local offsets from the sinusoids: the GELU of a grouped convolution over time of
    # the embeddings (this odd kernel, conv_position_groups groups) is added to them before
    # the sinusoids. 0: none, the paper's encoder.
    conv_positions: int = 0
    conv_position_groups: int = 16

    @classmethod
    def paper(cls, **changes) -> "AudioALBERTConfig":
        """The paper's size, with `changes` (e.g. attention="fixed_pattern", max_len=3000)."""
        return cls(**changes)

    @classmethod
    def tiny(cls, **changes) -> "AudioALBERTConfig":
        """2 layers of width 32, 4 heads, FFN 64: for tests and CPU runs."""
        return dataclasses.replace(cls(hidden_size=32, num_layers=2, num_heads=4, ffn_size=64), **changes)


@dataclass
class EncoderOutput:
    """Hugging Face-style outputs. hidden_states: the embeddings and each layer's output
    (num_layers + 1 tensors) when asked for; attentions: each layer's (B, H, T, T)
    weights when asked for."""

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


def sinusoidal_positions(length: int, width: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """(T, width) Vaswani et al. positions: sin(t / 10000^(2i / width)) in column 2i,
    cos in column 2i + 1."""
    position = torch.arange(length, device=device, dtype=torch.float64)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, device=device, dtype=torch.float64) * (-math.log(1e4) / width))
    table = torch.zeros(length, width, device=device, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: width // 2])
    return table.to(dtype)


class EncoderLayer(nn.Module):
    """Post-LN transformer layer: x = LN(x + drop(attn(x))); x = LN(x + drop(FFN(x))), with
    FFN = Linear, GELU, Linear."""

    def __init__(self, config: AudioALBERTConfig):
        super().__init__()
        self.self_attn = SelfAttention(config.hidden_size, config.num_heads, config.attention,
                                       max_len=config.max_len, dropout=config.dropout, **config.attention_options)
        self.ffn = nn.Sequential(nn.Linear(config.hidden_size, config.ffn_size), nn.GELU(),
                                 nn.Linear(config.ffn_size, config.hidden_size))
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, key_padding_mask=None, need_weights: bool = False):
        attended, weights = self.self_attn(x, key_padding_mask=key_padding_mask, need_weights=need_weights)
        x = self.norm1(x + self.dropout(attended))
        return self.norm2(x + self.dropout(self.ffn(x))), weights


class ALBERTEncoder(nn.Module):
    """Sinusoidal positions (after convolutional ones, when config.conv_positions is set),
    LayerNorm and dropout on (B, T, hidden) embeddings, then `num_layers` EncoderLayers (one
    shared layer unless config.share_layers is False)."""

    def __init__(self, config: AudioALBERTConfig):
        super().__init__()
        self.config = config
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        distinct = 1 if config.share_layers else config.num_layers
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(distinct))
        self.conv_positions = _conv_positions(config)

    def forward(self, inputs_embeds, key_padding_mask=None, *, output_hidden_states: bool = False,
                output_attentions: bool = False) -> EncoderOutput:
        """inputs_embeds (B, T, hidden); key_padding_mask (B, T) bool, True = padding."""
        if not (isinstance(inputs_embeds, torch.Tensor) and inputs_embeds.dim() == 3
                and inputs_embeds.shape[-1] == self.config.hidden_size):
            got = tuple(inputs_embeds.shape) if isinstance(inputs_embeds, torch.Tensor) else type(inputs_embeds)
            raise ValueError(f"inputs_embeds must be (B, T, hidden_size = {self.config.hidden_size}), got {got}")
        positions = sinusoidal_positions(inputs_embeds.shape[1], inputs_embeds.shape[2],
                                         device=inputs_embeds.device, dtype=inputs_embeds.dtype)
        if self.conv_positions is not None:
            # Padded frames enter as zeros, so a valid frame's output never depends on them.
            seen = inputs_embeds
            if key_padding_mask is not None:
                seen = seen.masked_fill(key_padding_mask[..., None], 0)
            inputs_embeds = inputs_embeds + F.gelu(self.conv_positions(seen.transpose(1, 2))).transpose(1, 2)
        x = self.dropout(self.norm(inputs_embeds + positions))
        hidden_states, attentions = [x], []
        for index in range(self.config.num_layers):
            x, weights = self.layers[index % len(self.layers)](x, key_padding_mask, need_weights=output_attentions)
            hidden_states.append(x)
            attentions.append(weights)
        return EncoderOutput(x, tuple(hidden_states) if output_hidden_states else None,
                             tuple(attentions) if output_attentions else None)


def _conv_positions(config: AudioALBERTConfig) -> nn.Conv1d | None:
    kernel, groups = config.conv_positions, config.conv_position_groups
    if not (isinstance(kernel, int) and kernel >= 0 and (kernel == 0 or kernel % 2 == 1)):
        raise ValueError(f"conv_positions must be 0 (none) or an odd kernel size, got {kernel!r}")
    if kernel == 0:
        return None
    if not (isinstance(groups, int) and groups >= 1 and config.hidden_size % groups == 0):
        raise ValueError(f"conv_position_groups must divide hidden_size = {config.hidden_size}, got {groups!r}")
    return nn.Conv1d(config.hidden_size, config.hidden_size, kernel, padding=kernel // 2, groups=groups)


class AudioALBERT(nn.Module):
    """Audio ALBERT: Linear(input_dim -> hidden) on the frame features, then ALBERTEncoder.

    forward(features (B, T, input_dim), key_padding_mask=None, *, inputs_embeds=None,
    output_hidden_states=False, output_attentions=False) -> EncoderOutput; pass
    `inputs_embeds` (B, T, hidden) instead of features to skip the input projection.
    """

    def __init__(self, config: AudioALBERTConfig):
        super().__init__()
        self.config = config
        self.input_proj = nn.Linear(config.input_dim, config.hidden_size)
        self.encoder = ALBERTEncoder(config)

    def forward(self, features=None, key_padding_mask=None, *, inputs_embeds=None,
                output_hidden_states: bool = False, output_attentions: bool = False) -> EncoderOutput:
        if (features is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of features (B, T, input_dim) and inputs_embeds (B, T, hidden_size)")
        if features is not None:
            if not (isinstance(features, torch.Tensor) and features.dim() == 3
                    and features.shape[-1] == self.config.input_dim):
                got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features)
                raise ValueError(f"features must be (B, T, input_dim = {self.config.input_dim}), got {got}")
            inputs_embeds = self.input_proj(features)
        return self.encoder(inputs_embeds, key_padding_mask, output_hidden_states=output_hidden_states,
                            output_attentions=output_attentions)
