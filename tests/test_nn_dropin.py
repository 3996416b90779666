"""fastattn.nn.SelfAttention as a drop-in for nn.MultiheadAttention: inside
nn.TransformerEncoderLayer (training and eval, whose fast path reads self_attn's
attributes), the MultiheadAttention call, and what it refuses."""

from __future__ import annotations

import pytest
import torch

from nn_cases import EMBED, HEADS, KINDS, attention, inputs, padding


def encoder_layer(kind):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(EMBED, HEADS, dim_feedforward=32, dropout=0.1, batch_first=True)
    layer.self_attn = attention(kind, dropout=0.1)
    return layer


@pytest.mark.parametrize("kind", KINDS)
def test_replaces_self_attn_of_transformer_encoder_layer(kind):
    layer = encoder_layer(kind)
    x, mask = inputs(3, 16, seed=30), padding(3, 16, seed=30)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer.train()
    before = layer.self_attn.in_proj_weight.detach().clone()
    layer(x, src_key_padding_mask=mask).square().mean().backward()
    optimizer.step()
    assert not torch.equal(layer.self_attn.in_proj_weight, before)
    layer.eval()
    with torch.no_grad():  # the conditions of torch's fused fast path, which must not replace the kind
        out = layer(x, src_key_padding_mask=mask)
    attended = layer.self_attn(x, key_padding_mask=mask)[0]
    want = layer.norm2(layer.norm1(x + attended) + layer._ff_block(layer.norm1(x + attended)))
    valid = ~mask
    torch.testing.assert_close(out[valid], want[valid], atol=1e-5, rtol=1e-4)


def test_multihead_attention_call():
    module = attention("strided")
    x, mask = inputs(2, 12, seed=31), padding(2, 12, seed=31)
    out, weights = module(x, x, x, key_padding_mask=mask, need_weights=True, attn_mask=None,
                          average_attn_weights=False, is_causal=False)
    torch.testing.assert_close(out, module(x, key_padding_mask=mask)[0])
    torch.testing.assert_close(module(x, mask)[0], out)  # the mask as the second positional argument
    assert weights.shape == (2, HEADS, 12, 12)


def test_float_additive_mask_is_read_as_padding():
    module = attention("fixed_pattern")
    x, mask = inputs(2, 12, seed=32), padding(2, 12, seed=32)
    additive = torch.zeros(2, 12).masked_fill(mask, float("-inf"))
    torch.testing.assert_close(module(x, key_padding_mask=additive)[0], module(x, key_padding_mask=mask)[0])


@pytest.mark.parametrize("call, error, match", [
    (lambda m, x: m(x, x.clone(), x), ValueError, "key and value must be the query"),
    (lambda m, x: m(x, x, x.clone()), ValueError, "key and value must be the query"),
    (lambda m, x: m(x, x, x, attn_mask=torch.zeros(12, 12, dtype=torch.bool)), ValueError, "attn_mask"),
    (lambda m, x: m(x, x, x, is_causal=True), ValueError, "is_causal"),
    (lambda m, x: m(x, torch.zeros(2, 12, dtype=torch.bool), key_padding_mask=torch.zeros(2, 12, dtype=torch.bool)),
     TypeError, "key_padding_mask given twice"),
])
def test_refuses_what_it_does_not_compute(call, error, match):
    with pytest.raises(error, match=match):
        call(attention("full"), inputs(2, 12, seed=33))


def test_stacks_in_transformer_encoder():
    """nn.TransformerEncoder copies the layer and inspects self_attn for its own fast path."""
    encoder = torch.nn.TransformerEncoder(encoder_layer("simple_lsh"), num_layers=2, enable_nested_tensor=False)
    x, mask = inputs(2, 16, seed=34), padding(2, 16, seed=34)
    encoder.train()
    encoder(x, src_key_padding_mask=mask).sum().backward()
    encoder.eval()
    with torch.no_grad():
        out = encoder(x, src_key_padding_mask=mask)
    first, second = encoder.layers
    want = second(first(x, src_key_padding_mask=mask), src_key_padding_mask=mask)
    torch.testing.assert_close(out[~mask], want[~mask])
