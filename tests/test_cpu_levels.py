"""The CPU kernels run one of several compiled copies (csrc/cpu/instruction_sets.h:
baseline x86-64, AVX2, AVX-512 with VPOPCNTDQ), picked by what the CPU has. The other
tests run the best copy of this machine only; these run each lower one, capped by
FASTATTN_CPU_LEVEL in a fresh process (the level is read once per process), against the
references."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = """
import torch
from fastattn import masks, ops, reference

generator = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(2, 3, 300, 16, generator=generator, dtype=torch.float64) for _ in range(3))
mask = torch.rand(2, 300, generator=generator) < 0.2
proj = torch.randn(70, 18, generator=generator, dtype=torch.float64)
q_codes = ops.alsh_hash(q, "sign_alsh", "query", proj, key_padding_mask=mask)
k_codes = ops.alsh_hash(k, "sign_alsh", "key", proj, key_padding_mask=mask)
for L in (5, 64, 400):
    for n_bits in (70, 32, 11):  # two words; one 32-bit word (its own CPU path); part of one
        got = ops.topk_keys(q_codes, k_codes, L, key_padding_mask=mask, n_bits=n_bits)
        want = reference.topk_keys(q_codes, k_codes, L, key_padding_mask=mask, n_bits=n_bits)
        assert torch.equal(got, want), (L, n_bits)
indices = masks.strided(300, 12)
torch.testing.assert_close(ops.sparse_attention(q, k, v, indices), reference.sparse_attention(q, k, v, indices))
print("ok")
"""


@pytest.mark.parametrize("level", ["baseline", "avx2"])
def test_lower_instruction_set_copies_match_the_references(level):
    env = {**os.environ, "FASTATTN_CPU_LEVEL": level}
    result = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
