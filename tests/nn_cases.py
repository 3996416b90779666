"""What the fastattn.nn tests share: small options for every kind, modules, inputs, and the
attention a module's returned weights imply."""

from __future__ import annotations

import torch

from fastattn.nn import KINDS, SelfAttention

EMBED, HEADS, MAX_LEN = 16, 4, 24
# Options that make every kind's pattern matter at T <= MAX_LEN (the defaults are sized for
# T in the hundreds, where e.g. L = 64 keys would cover the whole sequence).
SMALL_OPTIONS = {
    "strided": {"stride": 4},
    "fixed": {"stride": 4, "summary": 1},
    "local_global": {"window": 2, "global_idx": (0, 9)},
    **{scheme: {"L": 6, "n_bits": 8} for scheme in ("sign_alsh", "xbox", "xbox_qnf", "simple_lsh", "simple_alsh")},
    "performer": {"num_features": 32},
    "fixed_pattern": {"column_period": 5},
}
LSH_KINDS = ("sign_alsh", "xbox", "xbox_qnf", "simple_lsh", "simple_alsh")


def attention(kind: str, *, seed: int = 0, dtype=torch.float32, device="cpu", **changes) -> SelfAttention:
    """SelfAttention(EMBED, HEADS, kind, max_len=MAX_LEN) with the small options, in eval
    mode (fixed LSH projections, no dropout)."""
    torch.manual_seed(seed)
    options = {"max_len": MAX_LEN, **SMALL_OPTIONS.get(kind, {}), **changes}
    return SelfAttention(EMBED, HEADS, kind, **options).to(device, dtype).eval()


def inputs(batch: int, length: int, *, seed: int, dtype=torch.float32, device="cpu", width: int = EMBED):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, width, generator=generator, dtype=torch.float64).to(device, dtype)


def padding(batch: int, length: int, *, seed: int, device="cpu") -> torch.Tensor:
    """(B, T) bool, True = padding: item 0 unpadded, item 1 padded at the end, the others
    at random places (each keeping at least one key)."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    if batch > 1:
        mask[1, length - length // 3:] = True
    for b in range(2, batch):
        mask[b] = torch.rand(length, generator=generator) < 0.4
        mask[b, int(torch.randint(length, (1,), generator=generator))] = False
    return mask.to(device)


def output_from_weights(module: SelfAttention, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """What `module` outputs for batch-first x if its heads attend with `weights`
    (B, H, T, T): out_proj(weights @ values), the values from the last block of in_proj."""
    embed = module.embed_dim
    bias = None if module.in_proj_bias is None else module.in_proj_bias[-embed:]
    values = torch.nn.functional.linear(x, module.in_proj_weight[-embed:], bias)
    values = values.unflatten(-1, (module.num_heads, module.head_dim)).transpose(1, 2)
    return module.out_proj((weights @ values).transpose(1, 2).flatten(2))


__all__ = ["KINDS", "EMBED", "HEADS", "MAX_LEN", "SMALL_OPTIONS", "LSH_KINDS", "attention", "inputs", "padding",
           "output_from_weights"]
