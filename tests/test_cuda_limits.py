"""The limits of the CUDA kernels are checked in Python, by the wrappers and the fake
kernels alike, so torch.compile refuses what a kernel would refuse later. Fake CUDA
tensors carry shapes without memory or a GPU, so these run on any machine."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fastattn import ops


def _calls():
    def cuda(*shape, dtype=torch.float32):
        return torch.empty(*shape, dtype=dtype, device="cuda")

    codes = lambda length: cuda(1, 1, length, 1, dtype=torch.int64)  # noqa: E731
    return {
        "fixed: more than 65535 heads": (
            lambda: ops.fixed_attention(cuda(65536, 4, 4), cuda(1, 65536, 4, 8)), "heads"),
        "fixed: batch times column tiles": (
            lambda: ops.fixed_attention(cuda(1, 4, 4), cuda(32768, 1, 4, 65)), "B \\* ceil"),
        "sparse: head size above 256": (
            lambda: ops.sparse_attention(cuda(1, 1, 4, 257), cuda(1, 1, 4, 257), cuda(1, 1, 4, 257),
                                         cuda(1, 1, 4, 2, dtype=torch.int64)), "D = 256"),
        "sparse: more than 512 slots": (
            lambda: ops.sparse_attention(cuda(1, 1, 4, 8), cuda(1, 1, 4, 8), cuda(1, 1, 4, 8),
                                         cuda(1, 1, 4, 513, dtype=torch.int64)), "512"),
        "hash: head size above 3072": (
            lambda: ops.alsh_hash(cuda(1, 1, 4, 3073), "xbox", "key", cuda(8, 3074)), "3072"),
        "bucket: L above 256": (
            lambda: ops.topk_keys(codes(4), codes(4), 257, mode="bucket", q=cuda(1, 1, 4, 8), k=cuda(1, 1, 4, 8)),
            "256"),
    }


@pytest.mark.parametrize("case", list(_calls()))
def test_cuda_limit_is_named_before_any_kernel(case):
    call, words = _calls()[case]
    with FakeTensorMode(), pytest.raises(ValueError, match=words):
        call()
