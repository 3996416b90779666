"""fastattn.nn.SelfAttention under torch.compile: every kind traces without graph breaks
(fullgraph; aot_eager, which runs dynamo and AOT autograd, so the ops' fake kernels, but
skips code generation to keep the suite fast) and matches eager, forward and backward;
two kinds also through the default inductor backend."""

from __future__ import annotations

import pytest
import torch

from nn_cases import KINDS, attention, inputs, padding


def compiled_matches_eager(kind, *, backend, training):
    module = attention(kind, redraw_interval=None) if kind == "performer" else attention(kind)
    module.train(training)
    x, mask = inputs(2, 16, seed=50), padding(2, 16, seed=50)

    def loss(m, features):
        return m(features, key_padding_mask=mask)[0].sin().sum()

    results = []
    for fn in (loss, torch.compile(loss, backend=backend, fullgraph=True)):
        module.zero_grad()
        torch.manual_seed(3)  # the same LSH projections in training
        leaf = x.clone().requires_grad_()
        value = fn(module, leaf)
        value.backward()
        results.append([value, leaf.grad, *(p.grad for p in module.parameters())])
    torch.testing.assert_close(results[1], results[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("kind", KINDS)
def test_compiles_without_graph_breaks(kind, training):
    torch._dynamo.reset()
    compiled_matches_eager(kind, backend="aot_eager", training=training)


@pytest.mark.parametrize("kind", ["strided", "fixed_pattern"])
def test_inductor_training(kind):
    torch._dynamo.reset()
    compiled_matches_eager(kind, backend="inductor", training=True)


def test_performer_redraw_is_a_graph_break_that_compiles():
    module = attention("performer", redraw_interval=1).train()
    x = inputs(2, 16, seed=51)
    compiled = torch.compile(module, backend="aot_eager")
    features = module.mechanism.features.clone()
    torch.manual_seed(4)
    out = compiled(x)[0]
    assert not torch.equal(module.mechanism.features, features), "the compiled forward redraws"
    torch.testing.assert_close(out, module.eval()(x)[0])
