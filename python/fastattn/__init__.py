"""fastattn: efficient attention kernels for self-supervised audio transformers.

`fastattn.ops` holds the autograd-aware torch ops, `fastattn.reference` their
pure-PyTorch references, `fastattn.masks` the structured sparse-attention patterns.
"""

from fastattn import _library

_library.load()

from fastattn import masks, ops, reference  # noqa: E402  (the ops need the library loaded)
from fastattn import nn  # noqa: E402
from fastattn._build_info import WITH_CUDA as built_with_cuda  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ops", "masks", "reference", "nn", "built_with_cuda", "__version__"]
