"""fastattn.nn.AudioALBERT and ALBERTEncoder: outputs, shared layers, configs, padding,
every attention kind, and a token (text or SMILES) front end."""

from __future__ import annotations

import pytest
import torch

from fastattn.nn import ALBERTEncoder, AudioALBERT, AudioALBERTConfig, KINDS
from fastattn.nn.encoder import sinusoidal_positions
from helpers import requires_cuda
from nn_cases import LSH_KINDS, SMALL_OPTIONS, inputs, padding


def tiny(**changes):
    torch.manual_seed(0)
    return AudioALBERT(AudioALBERTConfig.tiny(input_dim=12, max_len=32, **changes)).eval()


def test_presets():
    paper = AudioALBERTConfig.paper()
    assert (paper.num_layers, paper.hidden_size, paper.num_heads, paper.ffn_size, paper.dropout) == (6, 768, 12,
                                                                                                       3072, 0.1)
    assert paper.share_layers and paper.attention == "full"
    assert AudioALBERTConfig.tiny(attention="strided").attention == "strided"


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_runs_trains_and_keeps_padding_out(kind):
    model = tiny(attention=kind, attention_options=SMALL_OPTIONS.get(kind, {}))
    x, mask = inputs(3, 20, seed=60, width=12), padding(3, 20, seed=60)
    out = model(x, mask, output_hidden_states=True, output_attentions=True)
    assert out.last_hidden_state.shape == (3, 20, 32)
    assert len(out.hidden_states) == 3 and out.hidden_states[-1] is out.last_hidden_state
    assert len(out.attentions) == 2 and out.attentions[0].shape == (3, 4, 20, 20)
    changed = torch.where(mask[..., None], 50 * inputs(3, 20, seed=61, width=12), x)
    valid = ~mask
    torch.testing.assert_close(model(changed, mask).last_hidden_state[valid], out.last_hidden_state[valid])
    model.train()
    model(x, mask).last_hidden_state.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_layers_share_weights_unless_told_not_to():
    shared, unshared = tiny(), tiny(share_layers=False, num_layers=3)
    assert len(shared.encoder.layers) == 1 and len(unshared.encoder.layers) == 3
    per_layer = sum(p.numel() for p in shared.encoder.layers[0].parameters())
    total = sum(p.numel() for p in unshared.parameters())
    assert total - sum(p.numel() for p in shared.parameters()) == 2 * per_layer
    out = shared(inputs(2, 10, seed=62, width=12), output_hidden_states=True)
    layer = shared.encoder.layers[0]
    torch.testing.assert_close(layer(out.hidden_states[1])[0], out.hidden_states[2])


def test_embedding_is_projection_plus_sinusoids_then_layer_norm():
    model = tiny()
    x = inputs(2, 10, seed=63, width=12)
    out = model(x, output_hidden_states=True)
    positions = sinusoidal_positions(10, 32)
    assert torch.allclose(positions[3, 0::2], torch.sin(3 / 10_000 ** (torch.arange(0, 32, 2) / 32)))
    torch.testing.assert_close(out.hidden_states[0], model.encoder.norm(model.input_proj(x) + positions))
    torch.testing.assert_close(model(inputs_embeds=model.input_proj(x)).last_hidden_state, out.last_hidden_state)


def test_token_front_end_learns():
    """The same encoder on token embeddings (a text or SMILES model) learns a task only
    attention solves: each position predicts its left neighbour's token."""
    torch.manual_seed(0)
    config = AudioALBERTConfig.tiny(dropout=0.0, attention="fixed_pattern", max_len=16)
    embed, encoder, head = torch.nn.Embedding(10, 32), ALBERTEncoder(config), torch.nn.Linear(32, 10)
    parameters = [*embed.parameters(), *encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=3e-3)
    tokens = torch.randint(1, 10, (16, 12), generator=torch.Generator().manual_seed(1))
    target = torch.roll(tokens, 1, dims=1)
    losses = []
    for _ in range(60):
        logits = head(encoder(embed(tokens)).last_hidden_state)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.parametrize("call, match", [
    (lambda m: m(), "exactly one of features"),
    (lambda m: m(inputs(2, 5, seed=0, width=12), inputs_embeds=inputs(2, 5, seed=0, width=32)), "exactly one"),
    (lambda m: m(inputs(2, 5, seed=0, width=11)), r"features must be \(B, T, input_dim = 12\)"),
    (lambda m: m(inputs_embeds=inputs(2, 5, seed=0, width=31)), "inputs_embeds must be"),
    (lambda m: m(inputs(2, 40, seed=0, width=12)), "exceeds max_len = 32"),
])
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny())


@requires_cuda
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_matches_cpu(kind):
    model = tiny(attention=kind, attention_options=SMALL_OPTIONS.get(kind, {}))
    x, mask = inputs(3, 20, seed=64, width=12), padding(3, 20, seed=64)
    want = model(x, mask).last_hidden_state
    got = model.cuda()(x.cuda(), mask.cuda()).last_hidden_state.cpu()
    valid = ~mask
    if kind in LSH_KINDS:  # a projection within rounding of 0 may flip a bit and change the keys
        assert torch.isfinite(got).all()
    else:
        torch.testing.assert_close(got[valid], want[valid], atol=1e-4, rtol=1e-4)


def test_convolutional_positions_are_local_and_ignore_padding():
    """conv_positions = 5 lets a frame's embedding see two frames each side, no further, and
    never a padded frame; the paper's encoder has none."""
    assert tiny().encoder.conv_positions is None
    model = tiny(conv_positions=5, conv_position_groups=4)
    x = inputs(1, 12, seed=64, width=12).requires_grad_()
    model(x, output_hidden_states=True).hidden_states[0][0, 6].sum().backward()
    reached = x.grad[0].abs().sum(-1) > 0
    assert reached.tolist() == [False] * 4 + [True] * 5 + [False] * 3
    x, mask = inputs(3, 20, seed=65, width=12), padding(3, 20, seed=65)
    changed = torch.where(mask[..., None], 50 * inputs(3, 20, seed=66, width=12), x)
    torch.testing.assert_close(model(changed, mask).last_hidden_state[~mask], model(x, mask).last_hidden_state[~mask])


@pytest.mark.parametrize("changes, match", [
    ({"conv_positions": 4}, "conv_positions must be 0 .* or an odd kernel size"),
    ({"conv_positions": 3, "conv_position_groups": 5}, "conv_position_groups must divide hidden_size = 32"),
])
def test_bad_convolutional_positions_are_named(changes, match):
    with pytest.raises(ValueError, match=match):
        tiny(**changes)
