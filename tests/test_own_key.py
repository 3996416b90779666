"""ops.drop_own_key_ (shared-QK self exclusion, in place) against reference.drop_own_key:
random lists of many shapes, the lists topk_keys makes, any strides, opcheck, compile and
bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastattn import ops, reference
from helpers import DEVICES, requires_cuda

op = torch.ops.fastattn


def random_lists(batch, heads, length, slots, *, seed, dtype=torch.int32, device="cpu"):
    """Lists with empty slots, the query's own key often (once or twice), other keys, and
    rows whose only key is the query's own."""
    generator = torch.Generator().manual_seed(seed)
    keys = max(length, 1)
    lists = torch.randint(-1, keys, (batch, heads, length, slots), generator=generator)
    own = torch.arange(length)[:, None].expand(length, slots)
    lists = torch.where(torch.rand(lists.shape, generator=generator) < 0.3, own, lists)
    only_own = torch.rand(batch, heads, length, 1, generator=generator) < 0.2
    lists = torch.where(only_own, torch.where(torch.rand(lists.shape, generator=generator) < 0.5, own, -1), lists)
    return lists.to(device, dtype)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 3), heads=st.integers(1, 3), length=st.integers(1, 40), slots=st.integers(1, 70),
       dtype=st.sampled_from([torch.int32, torch.int64]), seed=st.integers(0, 2**31 - 1))
def test_matches_reference(device, batch, heads, length, slots, dtype, seed):
    lists = random_lists(batch, heads, length, slots, seed=seed, dtype=dtype, device=device)
    want = reference.drop_own_key(lists)
    got = lists.clone()
    assert ops.drop_own_key_(got) is got
    assert torch.equal(got, want)


def test_rule_on_named_rows():
    lists = torch.tensor([[[[0, 1, -1], [1, -1, -1], [-1, 2, -1], [3, 3, 0], [-1, -1, -1]]]], dtype=torch.int32)
    # row 0: another key, own dropped; row 1: own key only, kept; row 2: kept (only key);
    # row 3: both own slots dropped; row 4: nothing listed.
    want = torch.tensor([[[[-1, 1, -1], [1, -1, -1], [-1, 2, -1], [-1, -1, 0], [-1, -1, -1]]]], dtype=torch.int32)
    assert torch.equal(ops.drop_own_key_(lists), want)


@pytest.mark.parametrize("device", DEVICES)
def test_lists_of_topk_keys(device):
    """The packed lists of the LSH kinds, more rows than a task of the CPU kernel."""
    generator = torch.Generator().manual_seed(3)
    codes = torch.randint(-2**62, 2**62, (2, 3, 700, 1), generator=generator).to(device)
    lists = ops.topk_keys(codes, codes, 9)
    want = reference.drop_own_key(lists)
    assert torch.equal(ops.drop_own_key_(lists), want)
    assert not (lists == torch.arange(700, device=device)[:, None]).any()  # every row lists others


@pytest.mark.parametrize("device", DEVICES)
def test_any_strides(device):
    base = random_lists(2, 3, 11, 16, seed=5, device=device)
    for view in (base.transpose(0, 1), base[..., ::3], base.permute(3, 1, 0, 2).contiguous().permute(2, 1, 3, 0)):
        want = reference.drop_own_key(view)
        untouched = base.clone()
        ops.drop_own_key_(view)
        assert torch.equal(view, want)
        if view.shape[-1] != base.shape[-1]:  # slots outside the view are left as they were
            assert torch.equal(base[..., 1::3], untouched[..., 1::3])


def test_stride_zero_on_a_dimension_of_one_is_accepted():
    lists = random_lists(1, 1, 7, 5, seed=10)
    view = lists.as_strided(lists.shape, (0, 0, 5, 1))
    want = reference.drop_own_key(lists)
    assert torch.equal(ops.drop_own_key_(view), want)


def test_empty_shapes():
    for shape in ((0, 2, 3, 4), (2, 2, 0, 4), (2, 2, 3, 0)):
        lists = torch.zeros(shape, dtype=torch.int32)
        assert ops.drop_own_key_(lists).shape == shape


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    torch.library.opcheck(op.drop_own_key_, (random_lists(2, 2, 9, 5, seed=7, device=device),))


def test_compiles_in_full_graph():
    def attend_lists(lists):
        return ops.drop_own_key_(lists.clone()) + 0

    lists = random_lists(1, 2, 12, 6, seed=8)
    got = torch.compile(attend_lists, fullgraph=True)(lists)
    assert torch.equal(got, reference.drop_own_key(lists))


@requires_cuda
def test_cuda_equals_cpu_on_many_rows():
    lists = random_lists(4, 12, 3000, 64, seed=9, dtype=torch.int64)
    got = ops.drop_own_key_(lists.cuda()).cpu()
    assert torch.equal(got, ops.drop_own_key_(lists))


@pytest.mark.parametrize(
    "lists, error, message",
    [
        ([[0, 1]], TypeError, "indices must be a torch.Tensor"),
        (torch.zeros(3, 4, dtype=torch.int32), ValueError, "indices must have 4 dimensions"),
        (torch.zeros(1, 1, 3, 4), TypeError, "indices must be int32 or int64"),
        (torch.zeros(1, 1, 3, 4, dtype=torch.int32).expand(2, 1, 3, 4), ValueError, "indices must own its elements"),
    ],
)
def test_bad_input(lists, error, message):
    with pytest.raises(error, match=message):
        ops.drop_own_key_(lists)
