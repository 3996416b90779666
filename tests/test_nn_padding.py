"""Key padding in fastattn.nn.SelfAttention: the values at padded positions never reach
the valid outputs, wherever the padding is, and a fully padded item stays finite."""

from __future__ import annotations

import pytest
import torch

from nn_cases import KINDS, attention, inputs, padding


@pytest.mark.parametrize("kind", KINDS)
def test_padded_values_do_not_change_valid_outputs(kind):
    module = attention(kind, dtype=torch.float64)  # eval: fixed projections, no dropout
    x, mask = inputs(4, 21, seed=10, dtype=torch.float64), padding(4, 21, seed=10)
    changed = torch.where(mask[..., None], 100 * inputs(4, 21, seed=11, dtype=torch.float64), x)
    out, weights = module(x, key_padding_mask=mask, need_weights=True)
    out_changed, weights_changed = module(changed, key_padding_mask=mask, need_weights=True)
    valid = ~mask
    torch.testing.assert_close(out_changed[valid], out[valid], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(weights_changed.transpose(1, 2)[valid], weights.transpose(1, 2)[valid],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_padding_is_not_the_same_as_no_padding(kind):
    """The mask is used: the valid outputs of a padded item differ from the unmasked ones."""
    module = attention(kind, dtype=torch.float64)
    x, mask = inputs(2, 21, seed=12, dtype=torch.float64), padding(2, 21, seed=12)
    masked, unmasked = module(x, key_padding_mask=mask)[0], module(x)[0]
    torch.testing.assert_close(masked[0], unmasked[0])
    assert not torch.allclose(masked[1][~mask[1]], unmasked[1][~mask[1]])


@pytest.mark.parametrize("kind", KINDS)
def test_fully_padded_item_is_finite_with_finite_gradients(kind):
    module = attention(kind).train()
    x = inputs(2, 12, seed=13).requires_grad_()
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[1] = True
    out, weights = module(x, key_padding_mask=mask, need_weights=True)
    out.sum().backward()
    assert torch.isfinite(out).all() and weights[1].eq(0).all()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)
