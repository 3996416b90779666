"""Attention modules: `SelfAttention` for every kind in `KINDS` (a drop-in for
torch.nn.MultiheadAttention in self-attention) and the Audio ALBERT encoder."""

from fastattn.nn.attention import KINDS, SelfAttention, kind_options, needs_max_len
from fastattn.nn.encoder import ALBERTEncoder, AudioALBERT, AudioALBERTConfig, EncoderLayer, EncoderOutput
from fastattn.nn.synthesizer import input_independent_logits

__all__ = [
    "KINDS", "SelfAttention", "kind_options", "needs_max_len", "input_independent_logits",
    "AudioALBERT", "AudioALBERTConfig", "ALBERTEncoder", "EncoderLayer", "EncoderOutput",
]
