"""fastattn.ops.sparse_attention and fastattn.masks against the float64 reference and dense
SDPA, with gradcheck, opcheck, compile, determinism and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fastattn import masks, ops, reference
from helpers import DEVICE_DTYPES, DEVICES, assert_close_to_reference, requires_cuda

op = torch.ops.fastattn


def qkv(batch, heads, length, dim, *, seed, device="cpu", dtype=torch.float64, keys=None):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length, dim, generator=generator, dtype=torch.float64)
    k, v = (torch.randn(batch, heads, keys or length, dim, generator=generator, dtype=torch.float64) for _ in "kv")
    return tuple(x.to(device, dtype) for x in (q, k, v))


def random_indices(index_batch, index_heads, queries, slots, keys, *, seed, device="cpu", empty=0.2):
    """Random key lists with a share of empty (-1) slots; repeats happen."""
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randint(0, max(keys, 1), (index_batch, index_heads, queries, slots), generator=generator)
    indices[torch.rand(indices.shape, generator=generator) < empty] = -1
    if keys == 0:
        indices.fill_(-1)
    return indices.to(device)


def check_against_reference(q, k, v, indices, scale=None):
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    out = ops.sparse_attention(*leaves, indices, scale=scale)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)

    def reference_at(dtype):
        xs = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
        ref = reference.sparse_attention(*xs, indices, scale=scale)
        ref.backward(grad_out.to(dtype))
        return (ref, *(x.grad for x in xs))

    truth, same_math = reference_at(torch.float64), reference_at(q.dtype)
    got = (out, *(x.grad for x in leaves))
    for name, g, t, s in zip(("out", "grad q", "grad k", "grad v"), got, truth, same_math):
        assert g.dtype == q.dtype
        assert_close_to_reference(name, g, t, s)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("dim", [16, 32, 64, 128])
@pytest.mark.parametrize("pattern", ["random", "strided", "fixed", "local_global", "causal"])
def test_matches_reference(device, dtype, dim, pattern):
    length = 70
    q, k, v = qkv(2, 3, length, dim, seed=dim, device=device, dtype=dtype)
    indices = {
        "random": lambda: random_indices(2, 1, length, 24, length, seed=dim, device=device),
        "strided": lambda: masks.strided(length, 8, device=device),
        "fixed": lambda: masks.fixed(length, 8, 2, device=device),
        "local_global": lambda: masks.local_global(length, 3, [0, 33], device=device),
        "causal": lambda: masks.strided(length, 8, causal=True, device=device),
    }[pattern]()
    check_against_reference(q, k, v, indices)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3), heads=st.integers(1, 3), queries=st.integers(1, 40), keys=st.integers(1, 40),
    slots=st.integers(1, 50), dim=st.sampled_from([16, 32, 64]), broadcast=st.booleans(), seed=st.integers(0, 2**31),
)
def test_matches_reference_on_random_shapes(device, dtype, batch, heads, queries, keys, slots, dim, broadcast, seed):
    q, _, _ = qkv(batch, heads, queries, dim, seed=seed, device=device, dtype=dtype)
    _, k, v = qkv(batch, heads, keys, dim, seed=seed + 1, device=device, dtype=dtype)
    shape = (1, 1) if broadcast else (batch, heads)
    check_against_reference(q, k, v, random_indices(*shape, queries, slots, keys, seed=seed, device=device),
                            scale=0.3 if seed % 2 else None)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("dim", [16, 32, 64, 24])
def test_rows_sharing_a_key_list_match_rows_that_do_not(device, dtype, dim):
    """Runs of rows with one key list (the CPU forward takes such rows eight at a time),
    with an empty row inside a run, broken by a different list, the same keys in another
    order and a packed list whose empty slots are in the middle; over two (batch, head)
    pairs and task boundaries."""
    shared, reordered, holes = [0, 5, 9, 30, -1], [30, 9, 5, 0, -1], [0, -1, 5, 9, 30]
    rows = [shared] * 5 + [[-1] * 5] + [shared] * 3 + [reordered] * 4 + [holes] * 3 + [[7, 8, -1, -1, -1]]
    rows += [shared] * (40 - len(rows))
    indices = torch.tensor(rows, dtype=torch.int32, device=device)[None, None]
    q, k, v = qkv(1, 2, 40, dim, seed=dim, device=device, dtype=dtype)
    check_against_reference(q, k, v, indices)
    check_against_reference(q, k, v, indices.expand(1, 2, 40, 5).contiguous())


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("dim", [16, 32, 64])
def test_rows_whose_lists_differ_only_in_empty_slots(device, dtype, dim):
    """Rows whose lists agree wherever both list a key, as shared-QK makes them (each row of
    a block drops its own key): the CPU forward takes them together over the union of their
    lists. Among them a row that lists one key only, a row that lists none, and rows that
    each fill a slot the others leave empty."""
    block = list(range(8, 16)) + [31, 39]
    rows = []
    for i in range(40):
        rows.append([key if key != i else -1 for key in block])
    rows[10] = [-1] * 9 + [39]
    rows[11] = [-1] * 10
    rows[16:20] = [[20, -1, -1], [-1, 21, -1], [-1, -1, 22], [20, 21, -1]]
    rows = [row + [-1] * (10 - len(row)) for row in rows]
    indices = torch.tensor(rows, dtype=torch.int32, device=device)[None, None]
    q, k, v = qkv(2, 2, 40, dim, seed=dim + 1, device=device, dtype=dtype)
    check_against_reference(q, k, v, indices)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
def test_scores_far_apart_underflow_to_zero_weight(device, dtype):
    """Scores tens of units apart: most exponentials underflow (the CPU's vector exp flushes
    below log(FLT_MIN) to 0), and the result still matches the reference."""
    q, k, v = qkv(2, 2, 50, 16, seed=3, device=device, dtype=dtype)
    check_against_reference(q * 6, k * 6, v, masks.strided(50, 7, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_matches_dense_sdpa_with_the_same_mask(device):
    length = 100
    q, k, v = qkv(2, 2, length, 32, seed=1, device=device, dtype=torch.float32)
    indices = masks.local_global(length, 4, [0, 50], device=device)
    allowed = torch.zeros(length, length + 1, dtype=torch.bool, device=device)
    allowed.scatter_(1, indices[0, 0].long().where(indices[0, 0] >= 0, length), True)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, :length])
    torch.testing.assert_close(ops.sparse_attention(q, k, v, indices), want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_edge_cases(device):
    q, k, v = qkv(1, 1, 1, 16, seed=2, device=device, dtype=torch.float32)  # T = 1, L > T
    check_against_reference(q, k, v, torch.tensor([[[[0, -1, 0, -1]]]], device=device))  # listed twice
    q, k, v = qkv(2, 2, 5, 16, seed=3, device=device, dtype=torch.float32)
    leaves = [x.requires_grad_() for x in (q, k, v)]
    empty = torch.full((1, 1, 5, 3), -1, device=device)
    out = ops.sparse_attention(*leaves, empty)
    out.sum().backward()
    assert out.eq(0).all() and all(x.grad.eq(0).all() for x in leaves)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_key_windows_and_plain_gathers_agree(dtype, monkeypatch):
    """At D = 128 a block's shared-memory window holds 64 (float32) or 128 (bfloat16) rows,
    so this strided mask reads its band from the window and its far columns from global
    memory; with windows turned off every slot gathers. Both match the reference."""
    q, k, v = qkv(1, 2, 700, 128, seed=9, device="cuda", dtype=dtype)
    indices = masks.strided(700, 20, device="cuda")
    check_against_reference(q, k, v, indices)
    monkeypatch.setenv("FASTATTN_SPARSE_WINDOW", "0")
    check_against_reference(q, k, v, indices)


def test_slot_listed_twice_counts_twice():
    q, k, v = qkv(1, 1, 1, 8, seed=4, keys=2)
    twice = ops.sparse_attention(q, k, v, torch.tensor([[[[0, 0, 1]]]]))
    scores = (q[0, 0, 0] @ k[0, 0].T) / 8**0.5
    weights = torch.softmax(torch.stack([scores[0], scores[0], scores[1]]), 0)
    torch.testing.assert_close(twice[0, 0, 0], weights[0] * v[0, 0, 0] * 2 + weights[2] * v[0, 0, 1])


def test_gradcheck():
    q, k, v = qkv(2, 2, 6, 4, seed=5)
    indices = random_indices(2, 1, 6, 5, 6, seed=5)
    assert torch.autograd.gradcheck(lambda a, b, c: ops.sparse_attention(a, b, c, indices),
                                    tuple(x.requires_grad_() for x in (q, k, v)))


@pytest.mark.parametrize("device", DEVICES)
def test_backward_is_bitwise_deterministic(device):
    q, k, v = qkv(2, 4, 300, 64, seed=6, device=device, dtype=torch.float32)
    indices = masks.strided(300, 17, device=device)

    def gradients():
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        ops.sparse_attention(*leaves, indices).square().sum().backward()
        return [x.grad for x in leaves]

    assert all(torch.equal(a, b) for a, b in zip(gradients(), gradients()))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    q, k, v = qkv(2, 2, 7, 8, seed=7, device=device, dtype=torch.float32)
    indices = random_indices(1, 2, 7, 5, 7, seed=7, device=device).int()
    torch.library.opcheck(op.sparse_attention_forward, (q, k, v, indices, 0.5))
    torch.library.opcheck(op.sparse_attention_forward, (*(x.clone().requires_grad_() for x in (q, k, v)), indices, 0.5))
    out, lse = op.sparse_attention_forward(q, k, v, indices, 0.5)
    torch.library.opcheck(op.sparse_attention_backward, (torch.randn_like(out), q, k, v, indices, 0.5, out, lse))


@pytest.mark.parametrize("device", DEVICES)
def test_compiles_without_graph_breaks(device):
    q, k, v = qkv(2, 2, 16, 8, seed=8, device=device, dtype=torch.float32)
    indices = masks.fixed(16, 4, 1, device=device)

    def loss(a, b, c):
        return ops.sparse_attention(a, b, c, indices).sin().sum()

    grads = []
    for fn in (loss, torch.compile(loss, fullgraph=True)):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        fn(*leaves).backward()
        grads.append([x.grad for x in leaves])
    torch.testing.assert_close(grads[0], grads[1])


def _bad_calls():
    q = torch.randn(2, 2, 5, 4)
    good = torch.zeros(1, 1, 5, 3, dtype=torch.long)
    return {
        "index out of range": ((q, q, q, torch.full((1, 1, 5, 3), 5)), ValueError, "indices"),
        "index below -1": ((q, q, q, torch.full((1, 1, 5, 3), -2)), ValueError, "indices"),
        "float indices": ((q, q, q, good.float()), TypeError, "indices"),
        "indices wrong rank": ((q, q, q, good[0]), ValueError, "indices"),
        "indices wrong length": ((q, q, q, torch.zeros(1, 1, 4, 3, dtype=torch.long)), ValueError, "indices"),
        "indices wrong heads": ((q, q, q, torch.zeros(1, 3, 5, 3, dtype=torch.long)), ValueError, "indices"),
        "k head dim": ((q, torch.randn(2, 2, 5, 3), torch.randn(2, 2, 5, 3), good), ValueError, "k"),
        "v shape": ((q, q, torch.randn(2, 2, 6, 4), good), ValueError, "v"),
        "dtype mix": ((q, q.double(), q, good), TypeError, "k"),
        "q wrong rank": ((q[0], q, q, good), ValueError, "q"),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
def test_bad_input_is_named(case):
    arguments, error, name = _bad_calls()[case]
    with pytest.raises(error, match=rf"\b{name}\b"):
        ops.sparse_attention(*arguments)


@pytest.mark.parametrize("T", [1, 7, 64])
@pytest.mark.parametrize("causal", [False, True])
def test_masks_match_their_definitions(T, causal):
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    keep = (j <= i) if causal else torch.ones(T, T, dtype=torch.bool)
    is_global = torch.zeros(T, dtype=torch.bool)
    is_global[[0, T // 2]] = True
    cases = {
        "strided": (masks.strided(T, 5, causal=causal), ((i - j).abs() < 5) | ((i - j) % 5 == 0)),
        "fixed": (masks.fixed(T, 6, 2, causal=causal), (j // 6 == i // 6) | (j % 6 >= 4)),
        "local_global": (masks.local_global(T, 2, [0, T // 2], causal=causal),
                         ((i - j).abs() <= 2) | is_global[None, :] | is_global[:, None]),
    }
    for name, (indices, definition) in cases.items():
        assert indices.dtype == torch.int32 and indices.shape[:3] == (1, 1, T)
        rows = indices[0, 0]
        dense = torch.zeros(T, T + 1, dtype=torch.bool).scatter_(1, rows.long().where(rows >= 0, T), True)[:, :T]
        assert torch.equal(dense, definition & keep), name
        assert (rows >= 0).sum(1).max() == rows.shape[1], f"{name}: L is the widest row"


def test_mask_arguments_are_checked():
    with pytest.raises(ValueError, match="stride"):
        masks.strided(10, 0)
    with pytest.raises(ValueError, match="summary"):
        masks.fixed(10, 4, 5)
    with pytest.raises(ValueError, match="global_idx"):
        masks.local_global(10, 1, [10])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch, heads", [(0, 2), (2, 0)])
def test_empty_batch_or_heads_has_empty_gradients(device, batch, heads):
    leaves = [x.requires_grad_() for x in qkv(batch, heads, 5, 8, seed=14, device=device, dtype=torch.float32)]
    out = ops.sparse_attention(*leaves, masks.strided(5, 2, device=device))
    out.sum().backward()
    assert out.shape == (batch, heads, 5, 8)
    assert all(x.grad.shape == x.shape for x in leaves)


def _bad_backward_arguments():
    """(name, replacement) pairs for one argument of a direct backward call."""
    return {
        "grad_out shape": ("grad_out", torch.randn(2, 2, 5, 3)),
        "grad_out dtype": ("grad_out", torch.randn(2, 2, 5, 4, dtype=torch.float64)),
        "out shape": ("out", torch.randn(2, 2, 4, 4)),
        "lse shape": ("lse", torch.randn(2, 2, 4)),
        "lse dtype": ("lse", torch.randn(2, 2, 5, dtype=torch.float64)),
    }


@pytest.mark.parametrize("case", list(_bad_backward_arguments()))
def test_direct_backward_call_checks_what_autograd_would_pass(case):
    q, k, v = qkv(2, 2, 5, 4, seed=15, dtype=torch.float32)
    indices = masks.strided(5, 2)
    out, lse = op.sparse_attention_forward(q, k, v, indices, 0.5)
    arguments = dict(grad_out=torch.randn_like(out), out=out, lse=lse)
    name, replacement = _bad_backward_arguments()[case]
    arguments[name] = replacement
    with pytest.raises((ValueError, TypeError), match=rf"\b{name}\b"):
        op.sparse_attention_backward(arguments["grad_out"], q, k, v, indices, 0.5, arguments["out"], arguments["lse"])


@requires_cuda
@pytest.mark.parametrize("structured", [True, False])
def test_forward_and_backward_are_captured_in_cuda_graphs(structured):
    """No host synchronisation: the index check is skipped under capture and each block
    decides on the device whether to stage its window (structured masks use windows,
    per-item random lists do not)."""
    q, k, v = qkv(2, 3, 300, 64, seed=16, device="cuda", dtype=torch.float32)
    indices = masks.strided(300, 16, device="cuda") if structured else random_indices(
        2, 3, 300, 24, 300, seed=16, device="cuda")
    leaves = [x.requires_grad_() for x in (q, k, v)]
    compiled = torch.compile(lambda a, b, c: ops.sparse_attention(a, b, c, indices), mode="reduce-overhead",
                             fullgraph=True)
    grad_out = torch.randn_like(q)
    for _ in range(3):
        out = compiled(*leaves)
        grads = torch.autograd.grad(out, leaves, grad_out)
    want = reference.sparse_attention(*leaves, indices)
    want_grads = torch.autograd.grad(want, leaves, grad_out)
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)
    for got_grad, want_grad in zip(grads, want_grads):
        torch.testing.assert_close(got_grad, want_grad, atol=1e-4, rtol=1e-4)
