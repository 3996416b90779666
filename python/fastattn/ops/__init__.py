"""Autograd-aware fastattn ops: `torch.ops.fastattn.*` behind checked, documented wrappers.

Each op lives in its own module, which registers the op's fake kernel and autograd and
defines its public wrapper.
"""

from fastattn.ops.fixed_attention import fixed_attention
from fastattn.ops.lsh import SCHEMES, alsh_hash, extra_dims, mips_transform, topk_keys
from fastattn.ops.own_key import drop_own_key_
from fastattn.ops.sparse_attention import sparse_attention

__all__ = [
    "fixed_attention", "sparse_attention", "SCHEMES", "mips_transform", "alsh_hash", "topk_keys", "extra_dims",
    "drop_own_key_",
]
