"""fastattn.ops.fixed_attention against its float64 reference, with gradcheck, opcheck,
torch.compile and one test per class of bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastattn import ops, reference
from helpers import DEVICE_DTYPES, DEVICES, PADDINGS, assert_close_to_reference, padding_mask, requires_cuda

op = torch.ops.fastattn


def make_inputs(batch, heads, length, dim, padding, *, seed, device="cpu", dtype=torch.float64, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(heads, length, length, generator=generator, dtype=torch.float64)
    v = torch.randn(batch, heads, length, dim, generator=generator, dtype=torch.float64)
    mask = padding_mask(padding, batch, length, generator)
    move = dict(device=device, dtype=dtype)
    return logits.to(**move), v.to(**move), None if mask is None else mask.to(device)


def check_against_reference(logits, v, mask):
    """Forward and both gradients of the op against the float64 reference."""
    logits = logits.detach().requires_grad_()
    v = v.detach().requires_grad_()
    out = ops.fixed_attention(logits, v, key_padding_mask=mask)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)

    def reference_at(dtype):
        l64 = logits.detach().to(dtype).requires_grad_()
        v64 = v.detach().to(dtype).requires_grad_()
        ref = reference.fixed_attention(l64, v64, mask)
        ref.backward(grad_out.to(dtype))
        return ref, l64.grad, v64.grad

    want = reference_at(torch.float64)
    same_math = reference_at(v.dtype)
    for name, got, truth, plain in zip(("out", "grad logits", "grad v"), (out, logits.grad, v.grad), want, same_math):
        assert got.dtype == v.dtype and got.device == v.device
        assert_close_to_reference(name, got, truth, plain)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("dim", [16, 32, 64, 128])
def test_matches_reference(device, dtype, padding, dim):
    length = {16: 1, 32: 7, 64: 33, 128: 130}[dim]
    check_against_reference(*make_inputs(3, 2, length, dim, padding, seed=dim, device=device, dtype=dtype))


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    heads=st.integers(1, 3),
    length=st.integers(1, 80),
    dim=st.sampled_from([16, 32, 64, 128]),
    padding=st.sampled_from(PADDINGS),
    seed=st.integers(0, 2**31),
)
def test_matches_reference_on_random_shapes(device, dtype, batch, heads, length, dim, padding, seed):
    check_against_reference(*make_inputs(batch, heads, length, dim, padding, seed=seed, device=device, dtype=dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("padding", ["none", "middle"])
def test_long_sequence(device, padding):
    check_against_reference(*make_inputs(2, 1, 1031, 16, padding, seed=1, device=device, dtype=torch.float32))


@pytest.mark.parametrize("padding", PADDINGS)
def test_gradcheck(padding):
    logits, v, mask = make_inputs(2, 2, 6, 3, padding, seed=3)
    assert torch.autograd.gradcheck(
        lambda l, x: ops.fixed_attention(l, x, key_padding_mask=mask),
        (logits.requires_grad_(), v.requires_grad_()),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_fully_padded_rows_give_zeros_and_zero_gradients(device):
    logits, v, _ = make_inputs(2, 2, 5, 4, "none", seed=4, device=device, dtype=torch.float32)
    mask = torch.zeros(2, 5, dtype=torch.bool, device=device)
    mask[1] = True
    logits.requires_grad_(), v.requires_grad_()
    out = ops.fixed_attention(logits, v, key_padding_mask=mask)
    out.sum().backward()
    assert out[1].eq(0).all()
    assert v.grad[1].eq(0).all()
    # the padded item adds nothing to the logits' gradient
    logits_alone = logits.detach().requires_grad_()
    ops.fixed_attention(logits_alone, v.detach()[:1]).sum().backward()
    torch.testing.assert_close(logits.grad, logits_alone.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_logits_may_be_a_strided_crop(device):
    parameter = torch.randn(2, 40, 40, device=device, requires_grad=True)
    v = torch.randn(3, 2, 17, 8, device=device)
    out = ops.fixed_attention(parameter[:, :17, :17], v)
    out.square().sum().backward()
    crop = parameter.detach()[:, :17, :17].contiguous().requires_grad_()
    want = reference.fixed_attention(crop, v)
    want.square().sum().backward()
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(parameter.grad[:, :17, :17], crop.grad)
    assert parameter.grad[:, 17:].eq(0).all() and parameter.grad[:, :, 17:].eq(0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("padding", PADDINGS)
def test_logits_with_minus_infinity_and_keys_not_adjacent(device, padding):
    """Logits whose keys are not adjacent in memory (a transposed view), some of them -inf
    and one row all -inf (zeros out, zero gradients); T not a multiple of any vector width."""
    logits, v, mask = make_inputs(3, 2, 21, 8, padding, seed=5, device=device)
    logits = logits.transpose(1, 2).contiguous().transpose(1, 2)
    logits[0, 4, ::3] = float("-inf")
    logits[1, 7] = float("-inf")
    check_against_reference(logits, v, mask)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_values(device):
    v_bthd = torch.randn(2, 9, 3, 8, device=device)
    v = v_bthd.transpose(1, 2)  # (B, H, T, D) view, not contiguous
    logits = torch.randn(3, 9, 9, device=device)
    out = ops.fixed_attention(logits, v)
    assert out.is_contiguous()
    torch.testing.assert_close(out, reference.fixed_attention(logits, v.contiguous()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 2, 5, 4), (2, 2, 0, 4), (2, 0, 5, 4)])
def test_empty_inputs(device, shape):
    batch, heads, length, dim = shape
    logits = torch.randn(heads, length, length, device=device, requires_grad=True)
    v = torch.randn(batch, heads, length, dim, device=device, requires_grad=True)
    out = ops.fixed_attention(logits, v)
    out.sum().backward()
    assert out.shape == shape and logits.grad.shape == logits.shape and v.grad.shape == v.shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("padding", ["none", "random"])
def test_backward_is_deterministic(device, padding):
    logits, v, mask = make_inputs(4, 3, 50, 32, padding, seed=5, device=device, dtype=torch.float32)

    def gradients():
        l, x = logits.clone().requires_grad_(), v.clone().requires_grad_()
        ops.fixed_attention(l, x, key_padding_mask=mask).sum().backward()
        return l.grad, x.grad

    first, second = gradients(), gradients()
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("padding", ["none", "middle"])
def test_opcheck(device, padding):
    logits, v, mask = make_inputs(2, 2, 6, 4, padding, seed=6, device=device, dtype=torch.float32)
    torch.library.opcheck(op.fixed_attention_forward, (logits, v, mask))
    torch.library.opcheck(op.fixed_attention_forward, (logits.clone().requires_grad_(), v.clone().requires_grad_(), mask))
    out, lse = op.fixed_attention_forward(logits, v, mask)
    torch.library.opcheck(op.fixed_attention_backward, (torch.randn_like(out), logits, v, mask, out, lse))


def test_double_backward_says_it_is_unsupported():
    logits, v, _ = make_inputs(1, 1, 4, 2, "none", seed=9)
    logits.requires_grad_()
    (grad,) = torch.autograd.grad(ops.fixed_attention(logits, v).sum(), logits, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        grad.sum().backward()


@pytest.mark.parametrize("device", DEVICES)
def test_compiles_without_graph_breaks(device):
    logits, v, mask = make_inputs(2, 2, 12, 8, "end", seed=7, device=device, dtype=torch.float32)

    def loss(l, x):
        return ops.fixed_attention(l, x, key_padding_mask=mask).sin().sum()

    compiled = torch.compile(loss, fullgraph=True)
    grads = []
    for fn in (loss, compiled):
        l, x = logits.clone().requires_grad_(), v.clone().requires_grad_()
        fn(l, x).backward()
        grads.append((l.grad, x.grad))
    torch.testing.assert_close(grads[0], grads[1])


@requires_cuda
def test_runs_on_the_current_stream_under_cuda_graphs():
    logits, v, _ = make_inputs(2, 2, 16, 8, "none", seed=8, device="cuda", dtype=torch.float32)
    compiled = torch.compile(lambda l, x: ops.fixed_attention(l, x), mode="reduce-overhead", fullgraph=True)
    for _ in range(3):
        out = compiled(logits, v)
    torch.testing.assert_close(out, reference.fixed_attention(logits, v))


# One case per class of bad input: (arguments, exception, words the message must contain).
def _bad_inputs():
    logits, v = torch.randn(2, 5, 5), torch.randn(3, 2, 5, 4)
    return {
        "logits not a tensor": ((logits.tolist(), v), TypeError, "logits"),
        "logits wrong rank": ((logits[0], v), ValueError, "logits"),
        "logits not square": ((logits[:, :, :4], v), ValueError, "logits"),
        "v wrong rank": ((logits, v[0]), ValueError, "v"),
        "v heads mismatch": ((torch.randn(3, 5, 5), v), ValueError, "v"),
        "v length mismatch": ((torch.randn(2, 6, 6), v), ValueError, "v"),
        "integer dtype": ((logits.long(), v.long()), TypeError, "v"),
        "half on the CPU": ((logits.half(), v.half()), TypeError, "v"),
        "dtype mismatch": ((logits.double(), v), TypeError, "logits"),
        "mask not bool": ((logits, v, torch.zeros(3, 5)), TypeError, "key_padding_mask"),
        "mask wrong batch": ((logits, v, torch.zeros(2, 5, dtype=torch.bool)), ValueError, "key_padding_mask"),
        "mask wrong length": ((logits, v, torch.zeros(3, 4, dtype=torch.bool)), ValueError, "key_padding_mask"),
        "mask wrong rank": ((logits, v, torch.zeros(5, dtype=torch.bool)), ValueError, "key_padding_mask"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_input_is_named(case):
    arguments, error, name = _bad_inputs()[case]
    mask = arguments[2] if len(arguments) == 3 else None
    with pytest.raises(error, match=rf"\b{name}\b"):
        ops.fixed_attention(*arguments[:2], key_padding_mask=mask)


@requires_cuda
def test_device_mix_is_named():
    with pytest.raises(ValueError, match="logits"):
        ops.fixed_attention(torch.randn(2, 5, 5), torch.randn(3, 2, 5, 4, device="cuda"))


def test_direct_op_call_with_bad_shapes_raises_instead_of_crashing():
    with pytest.raises(ValueError, match="v must be"):
        op.fixed_attention_forward(torch.randn(2, 5, 5), torch.randn(3, 2, 6, 4), None)


def test_batch_of_one_with_padding_gets_masked_gradients():
    """With B = 1 a masked call has one softmax set, as an unmasked one does; the backward
    once took that for the shared, unmasked softmax and ignored the padding."""
    logits, v, _ = make_inputs(1, 2, 20, 8, "none", seed=12)
    mask = torch.zeros(1, 20, dtype=torch.bool)
    mask[0, [3, 11]] = True
    check_against_reference(logits, v, mask)
    check_against_reference(logits.float(), v.float(), mask)


def _bad_backward_arguments():
    """(name, replacement) pairs for one argument of a direct backward call."""
    return {
        "grad_out shape": ("grad_out", torch.randn(3, 2, 5, 3)),
        "grad_out dtype": ("grad_out", torch.randn(3, 2, 5, 4, dtype=torch.float64)),
        "out shape": ("out", torch.randn(3, 2, 4, 4)),
        "lse shape": ("lse", torch.randn(3, 2, 5)),  # unmasked: one softmax set, (1, H, T)
        "lse dtype": ("lse", torch.randn(1, 2, 5, dtype=torch.float64)),
    }


@pytest.mark.parametrize("case", list(_bad_backward_arguments()))
def test_direct_backward_call_checks_what_autograd_would_pass(case):
    logits, v = torch.randn(2, 5, 5), torch.randn(3, 2, 5, 4)
    out, lse = op.fixed_attention_forward(logits, v, None)
    arguments = dict(grad_out=torch.randn_like(out), out=out, lse=lse)
    name, replacement = _bad_backward_arguments()[case]
    arguments[name] = replacement
    with pytest.raises((ValueError, TypeError), match=rf"\b{name}\b"):
        op.fixed_attention_backward(arguments["grad_out"], logits, v, None, arguments["out"], arguments["lse"])


@requires_cuda
def test_cuda_backward_takes_a_non_contiguous_lse():
    """The CUDA backward once kept a pointer into lse.contiguous(), a temporary freed before
    its kernels ran; a strided lse shows it (wrong gradients, or a sanitizer report)."""
    logits, v, mask = make_inputs(2, 3, 40, 16, "random", seed=13, device="cuda", dtype=torch.float32)
    out, lse = op.fixed_attention_forward(logits, v, mask)
    strided_lse = lse.transpose(0, 1).contiguous().transpose(0, 1)
    grad_out = torch.randn_like(out)
    want = op.fixed_attention_backward(grad_out, logits, v, mask, out, lse)
    got = op.fixed_attention_backward(grad_out, logits, v, mask, out, strided_lse)
    for got_grad, want_grad in zip(got, want):
        torch.testing.assert_close(got_grad, want_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gap", [30.0, 200.0, 800.0])
def test_rows_whose_valid_keys_underflow_against_the_padded_ones(dtype, gap):
    """The exponentials are shared by the batch, relative to each row's maximum over all
    keys. When the padding hides the keys that hold that maximum, an item's valid keys can
    lie `gap` below it: exp(-gap) is subnormal or 0 (float32 past about 87 and 103, float64
    past 708), and those rows must be redone exactly instead."""
    logits, v, _ = make_inputs(3, 2, 12, 8, "none", seed=20, dtype=dtype)
    logits = logits.clone()
    logits[:, :, :4] += gap  # keys 0..3 dominate every row
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[1, :4] = True  # item 1 sees only the low keys
    mask[2, :2] = True  # item 2 keeps two dominant keys: the shared path serves it
    check_against_reference(logits, v, mask)
