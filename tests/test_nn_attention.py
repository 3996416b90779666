"""fastattn.nn.SelfAttention for every kind: shapes and dtypes, the returned weights (rows
sum to 1, zero on padding, and they are the weights the output uses), gradients, state
dict, .to(dtype)."""

from __future__ import annotations

import pytest
import torch

from helpers import DEVICE_DTYPES
from nn_cases import HEADS, KINDS, attention, inputs, output_from_weights, padding


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_dtypes(kind, device, dtype):
    module = attention(kind, dtype=dtype, device=device)
    x = inputs(3, 13, seed=1, dtype=dtype, device=device)
    for training in (True, False):
        module.train(training)
        out, weights = module(x, key_padding_mask=padding(3, 13, seed=1, device=device), need_weights=True)
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
        assert weights.shape == (3, HEADS, 13, 13) and weights.dtype == dtype
        assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    assert module(x)[1] is None


@pytest.mark.parametrize("kind", KINDS)
def test_weights_are_probabilities_over_the_valid_keys(kind):
    module = attention(kind, dtype=torch.float64)
    x, mask = inputs(4, 17, seed=2, dtype=torch.float64), padding(4, 17, seed=2)
    _, weights = module(x, key_padding_mask=mask, need_weights=True)
    assert (weights >= 0).all()
    assert weights.masked_select(mask[:, None, None, :]).eq(0).all()
    # A row sums to 1, or to 0 where a local pattern meets only padding; item 0 has none.
    sums = weights.sum(-1)
    rounded = sums.round()
    torch.testing.assert_close(sums, rounded)
    assert rounded[0].eq(1).all() and rounded.eq(1).float().mean() > 0.9


@pytest.mark.parametrize("kind", KINDS)
def test_output_is_the_weights_applied_to_the_values(kind):
    """need_weights computes the weights apart from the kernels; both must agree."""
    module = attention(kind, dtype=torch.float64)
    x, mask = inputs(3, 19, seed=3, dtype=torch.float64), padding(3, 19, seed=3)
    out, weights = module(x, key_padding_mask=mask, need_weights=True)
    torch.testing.assert_close(out, output_from_weights(module, x, weights))
    torch.testing.assert_close(module(x, key_padding_mask=mask)[0], out)


@pytest.mark.parametrize("kind", KINDS)
def test_average_attn_weights_averages_the_heads(kind):
    module = attention(kind)
    x = inputs(2, 9, seed=4)
    _, weights = module(x, need_weights=True)
    _, averaged = module(x, x, x, need_weights=True, average_attn_weights=True)
    torch.testing.assert_close(averaged, weights.mean(1))


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter(kind):
    module = attention(kind, dropout=0.1).train()
    x = inputs(2, 15, seed=5).requires_grad_()
    out, _ = module(x, key_padding_mask=padding(2, 15, seed=5))
    out.square().sum().backward()
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        assert torch.isfinite(parameter.grad).all(), name
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip(kind):
    source, target = attention(kind, seed=6), attention(kind, seed=7)
    x = inputs(2, 11, seed=6)
    assert not torch.equal(source(x)[0], target(x)[0])
    target.load_state_dict(source.state_dict())
    torch.testing.assert_close(target(x)[0], source(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_to_dtype(kind):
    module = attention(kind)
    x = inputs(2, 10, seed=8)
    want = module(x)[0]
    module.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in module.parameters())
    got = module(x.double())[0]
    assert got.dtype == torch.float64
    torch.testing.assert_close(got.float(), want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_batch_first_false_transposes(kind):
    module = attention(kind)
    x = inputs(2, 10, seed=9)
    want = module(x)[0]
    module.batch_first = False
    out = module(x.transpose(0, 1))[0]
    torch.testing.assert_close(out.transpose(0, 1), want)
