"""fastattn.nn.SelfAttention's construction and input checks: every error names what is
wrong; the kinds' options and defaults."""

from __future__ import annotations

import pytest
import torch

from fastattn.nn import KINDS, SelfAttention, kind_options, needs_max_len
from nn_cases import attention, inputs


def test_kinds_are_the_spec_table():
    assert KINDS == ("full", "shared_qk", "strided", "fixed", "sign_alsh", "xbox", "xbox_qnf", "simple_lsh",
                     "simple_alsh", "synth_dense", "synth_dense_m", "synth_random", "fixed_pattern", "performer",
                     "local_global")


def test_kinds_with_weights_over_positions_need_max_len():
    positional = {"synth_dense", "synth_dense_m", "synth_random", "fixed_pattern"}
    assert {kind for kind in KINDS if needs_max_len(kind)} == positional
    for kind in positional:
        with pytest.raises(ValueError, match="pass max_len"):
            SelfAttention(16, 4, kind)
    with pytest.raises(ValueError, match="kind must be one of"):
        needs_max_len("dense")


def test_documented_defaults():
    assert kind_options("full") == {} and kind_options("synth_dense") == {}
    assert kind_options("strided") == {"stride": 32, "shared_qk": True}
    assert kind_options("fixed") == {"stride": 32, "summary": 4, "shared_qk": True}
    assert kind_options("xbox") == {"L": 64, "n_bits": None, "mode": "hamming", "shared_qk": True, "m": None,
                                    "U": None}
    assert kind_options("performer") == {"num_features": None, "redraw_interval": 1000}
    sign_alsh = SelfAttention(16, 4, "sign_alsh").mechanism
    assert (sign_alsh.m, sign_alsh.U, sign_alsh.n_bits, sign_alsh.L) == (2, 0.75, 32, 64)
    assert SelfAttention(16, 4, "xbox", mode="bucket").mechanism.n_bits == 4
    assert SelfAttention(256, 4, "performer").mechanism.features.shape == (266, 64)


@pytest.mark.parametrize("arguments, options, error, match", [
    ((16, 4, "fulll"), {}, ValueError, "kind must be one of full, shared_qk"),
    ((16, 4, "strided"), {"strde": 3}, TypeError, r"unknown option\(s\) strde for kind 'strided'; it takes stride"),
    ((16, 4, "full"), {"stride": 3}, TypeError, "it takes no options"),
    ((16, 4, "xbox"), {"scheme": "sign_alsh"}, TypeError, "unknown option"),
    ((16, 5, "full"), {}, ValueError, "divisible by num_heads"),
    ((16, 4, "synth_random"), {}, ValueError, "pass max_len"),
    ((16, 4, "fixed_pattern"), {}, ValueError, "pass max_len"),
    ((16, 4, "strided"), {"stride": 0}, ValueError, "stride must be a positive integer"),
    ((16, 4, "fixed"), {"stride": 4, "summary": 5}, ValueError, "summary"),
    ((16, 4, "xbox"), {"m": 3}, ValueError, "m and U are options of sign_alsh only"),
    ((16, 4, "sign_alsh"), {"U": 1.5}, ValueError, "U must be"),
    ((16, 4, "simple_lsh"), {"mode": "buckets"}, ValueError, "mode"),
    ((16, 4, "simple_lsh"), {"n_bits": 300}, ValueError, "n_bits"),
    ((16, 4, "simple_lsh"), {"L": 0}, ValueError, "L must be"),
    ((16, 4, "performer"), {"redraw_interval": 0}, ValueError, "redraw_interval"),
    ((16, 4, "local_global"), {"global_idx": [-1]}, ValueError, "global_idx"),
    ((16, 4, "full"), {"max_len": 0}, ValueError, "max_len"),
    ((16, 4, "full"), {"dropout": 1.0}, ValueError, "dropout"),
])
def test_bad_construction_is_named(arguments, options, error, match):
    with pytest.raises(error, match=match):
        SelfAttention(*arguments, **options)


@pytest.mark.parametrize("call, error, match", [
    (lambda m: m(inputs(2, 8, seed=0)[0]), ValueError, r"query must have 3 dimensions \(B, T, E\)"),
    (lambda m: m(inputs(2, 8, seed=0, width=12)), ValueError, "embed_dim = 16"),
    (lambda m: m(inputs(2, 8, seed=0).long()), TypeError, "float"),
    (lambda m: m(inputs(2, 25, seed=0)), ValueError, "T = 25 exceeds max_len = 24"),
    (lambda m: m(inputs(2, 8, seed=0), key_padding_mask=torch.zeros(2, 7, dtype=torch.bool)), ValueError,
     r"key_padding_mask must be a \(B, T\) = \(2, 8\)"),
    (lambda m: m(inputs(2, 8, seed=0), key_padding_mask=torch.zeros(2, 8, dtype=torch.long)), TypeError,
     "key_padding_mask must be bool"),
])
@pytest.mark.parametrize("kind", ["full", "strided", "simple_lsh", "fixed_pattern"])
def test_bad_input_is_named(kind, call, error, match):
    with pytest.raises(error, match=match):
        call(attention(kind))


def test_kinds_without_position_weights_take_any_length():
    module = attention("strided", max_len=None)
    assert module(inputs(1, 100, seed=0))[0].shape == (1, 100, 16)


@pytest.mark.parametrize("kind", ["strided", "fixed", "local_global"])
def test_patterns_built_without_max_len_follow_each_length(kind):
    """Without max_len a pattern is built at the first call of a length and kept: calls
    alternating between lengths each get their own length's pattern, as with max_len."""
    with_max_len = attention(kind)
    without = attention(kind, max_len=None)
    for length in (20, 13, 20, 24):
        x = inputs(2, length, seed=length)
        torch.testing.assert_close(without(x)[0], with_max_len(x)[0])
