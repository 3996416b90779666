"""Autograd-aware fastattn ops: `torch.ops.fastattn.*` behind checked, documented wrappers.

Each op lives in its own module, which registers the op's fake kernel and autograd and
defines its public wrapper.
"""

from fastattn.ops.fixed_attention import fixed_attention

__all__ = ["fixed_attention"]
