"""The LSH ops (mips_transform, alsh_hash, topk_keys) against their pure-PyTorch references,
the properties SPEC sections 1 to 3 name, opcheck, compile and bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastattn import ops, reference
from helpers import DEVICES, PADDINGS, padding_mask, requires_cuda

op = torch.ops.fastattn
ROLES = ("query", "key")


def queries_and_keys(batch, heads, length, dim, padding, *, seed, device="cpu", dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length, dim, generator=generator, dtype=torch.float64)
    # keys of unequal norms, so the norm terms of the transforms matter
    k = torch.randn(batch, heads, length, dim, generator=generator, dtype=torch.float64)
    k = k * torch.rand(batch, heads, length, 1, generator=generator, dtype=torch.float64).mul(2)
    mask = padding_mask(padding, batch, length, generator)
    move = dict(device=device, dtype=dtype)
    return q.to(**move), k.to(**move), None if mask is None else mask.to(device)


def projections(n_bits, width, *, seed, device="cpu", dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n_bits, width, generator=generator, dtype=torch.float64).to(device, dtype)


def assert_codes_match(got, x, scheme, role, proj, mask, keys):
    """Codes equal the float64 reference's, except on bits whose projection is within
    rounding of 0 (where the sign is not determined by the math)."""
    x64, keys64 = x.double(), None if keys is None else keys.double()
    want = reference.alsh_hash(x64, scheme, role, proj.double(), key_padding_mask=mask, keys=keys64)
    values = reference.mips_transform(x64, scheme, role, key_padding_mask=mask, keys=keys64) @ proj.double().T
    tolerance = 1e-9 if x.dtype == torch.float64 else 1e-4 * values.abs().amax().clamp_min(1)
    unsure = values.abs() <= tolerance
    n_bits = proj.shape[0]
    bit = torch.arange(n_bits, device=got.device)
    got_bits = (got[..., bit // 64] >> (bit % 64)) & 1
    want_bits = (want[..., bit // 64] >> (bit % 64)) & 1
    assert torch.equal(got_bits[~unsure], want_bits[~unsure].to(got.device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scheme", ops.SCHEMES)
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("padding", ["none", "middle", "everywhere"])
def test_transform_matches_reference(device, scheme, role, padding):
    q, k, mask = queries_and_keys(2, 3, 17, 16, padding, seed=1, device=device)
    x = q if role == "query" else k
    got = ops.mips_transform(x, scheme, role, key_padding_mask=mask, keys=k)
    want = reference.mips_transform(x, scheme, role, key_padding_mask=mask, keys=k)
    assert got.shape == (*x.shape[:3], x.shape[3] + ops.extra_dims(scheme))
    # sqrt(M^2 - ||k||^2) at keys of norm close to M loses half its digits to
    # cancellation when the two sides sum ||k||^2 in other orders: sqrt(eps) times the
    # norms (up to about 10 here). At the largest key itself it is exactly 0 on both.
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-9)
    if mask is not None:
        assert got[mask[:, None, :].expand(got.shape[:3])].eq(0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m, U", [(1, 0.5), (3, 0.83)])
def test_sign_alsh_parameters(device, m, U):
    _, k, _ = queries_and_keys(1, 2, 9, 8, "none", seed=2, device=device)
    got = ops.mips_transform(k, "sign_alsh", "key", m=m, U=U)
    torch.testing.assert_close(got, reference.mips_transform(k, "sign_alsh", "key", m=m, U=U))


def test_zero_vectors_map_to_zeros():
    x = torch.zeros(1, 1, 3, 4, dtype=torch.float64)
    for scheme in ops.SCHEMES:
        for role in ROLES:
            assert ops.mips_transform(x, scheme, role, keys=x).eq(0).all(), (scheme, role)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=30, deadline=None)
@given(
    scheme=st.sampled_from(ops.SCHEMES),
    role=st.sampled_from(ROLES),
    n_bits=st.sampled_from([1, 7, 63, 64, 65, 128, 200, 256]),
    length=st.integers(1, 40),
    dim=st.sampled_from([16, 32, 64]),
    padding=st.sampled_from(PADDINGS),
    seed=st.integers(0, 2**31),
)
def test_hash_matches_reference(device, scheme, role, n_bits, length, dim, padding, seed):
    q, k, mask = queries_and_keys(2, 2, length, dim, padding, seed=seed, device=device)
    x = q if role == "query" else k
    proj = projections(n_bits, dim + ops.extra_dims(scheme), seed=seed + 1, device=device)
    got = ops.alsh_hash(x, scheme, role, proj, key_padding_mask=mask, keys=k)
    assert got.dtype == torch.int64 and got.shape == (*x.shape[:3], -(-n_bits // 64))
    assert_codes_match(got, x, scheme, role, proj, mask, k)
    if mask is not None:
        assert got[mask[:, None, :].expand(got.shape[:3])].eq(0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_xbox_and_xbox_qnf_give_identical_codes(device):
    q, k, mask = queries_and_keys(2, 2, 30, 32, "random", seed=3, device=device)
    proj = projections(128, 33, seed=4, device=device)
    for role in ROLES:
        xbox = ops.alsh_hash(q if role == "query" else k, "xbox", role, proj, key_padding_mask=mask, keys=k)
        qnf = ops.alsh_hash(q if role == "query" else k, "xbox_qnf", role, proj, key_padding_mask=mask, keys=k)
        assert torch.equal(xbox, qnf)


@pytest.mark.parametrize("scheme", ops.SCHEMES)
def test_hamming_score_correlates_with_inner_product(scheme):
    """With 256 bits, more equal bits should mean a larger q . k, row by row."""
    generator = torch.Generator().manual_seed(5)
    q, k = torch.randn(2, 1, 4, 128, 32, generator=generator)
    proj = projections(256, 32 + ops.extra_dims(scheme), seed=6, dtype=torch.float32)
    q_codes = ops.alsh_hash(q, scheme, "query", proj, keys=k)
    k_codes = ops.alsh_hash(k, scheme, "key", proj)
    differ = reference._popcount(q_codes[:, :, :, None, :] ^ k_codes[:, :, None, :, :]).sum(-1)
    score = (256 - differ).double()
    dots = (q @ k.transpose(-1, -2)).double()

    def centred(x):
        return x - x.mean(-1, keepdim=True)

    correlation = (centred(score) * centred(dots)).sum(-1) / (
        centred(score).norm(dim=-1) * centred(dots).norm(dim=-1))
    # simple_alsh scales queries by the largest query norm instead of their own, which
    # compresses each row's angles (about 0.78 here): the SPEC's 0.8 holds for the others.
    floor = 0.7 if scheme == "simple_alsh" else 0.8
    assert correlation.mean() >= floor, f"{scheme}: mean per-row correlation {correlation.mean():.3f}"


def random_codes(batch, heads, length, words, *, seed, device, n_distinct=None):
    """int64 codes; with n_distinct, drawn from that few distinct codes, so that ties and
    bucket collisions are common."""
    generator = torch.Generator().manual_seed(seed)
    full = torch.randint(-(2**63), 2**63 - 1, (batch, heads, length, words), generator=generator)
    if n_distinct is not None:
        palette = torch.randint(-(2**63), 2**63 - 1, (n_distinct, words), generator=generator)
        full = palette[torch.randint(0, n_distinct, (batch, heads, length), generator=generator)]
    return full.to(device)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(["hamming", "bucket"]),
    words=st.integers(1, 4),
    n_bits=st.one_of(st.none(), st.integers(1, 64)),
    length=st.integers(1, 50),
    L=st.integers(0, 60),
    distinct=st.sampled_from([None, 1, 3]),
    padding=st.sampled_from(PADDINGS),
    seed=st.integers(0, 2**31),
)
def test_topk_matches_reference(device, mode, words, n_bits, length, L, distinct, padding, seed):
    q, k, mask = queries_and_keys(2, 2, length, 8, padding, seed=seed, device=device)
    q_codes = random_codes(2, 2, length, words, seed=seed, device=device, n_distinct=distinct)
    k_codes = random_codes(2, 2, length, words, seed=seed + 1, device=device, n_distinct=distinct)
    got = ops.topk_keys(q_codes, k_codes, L, key_padding_mask=mask, mode=mode, q=q, k=k, n_bits=n_bits)
    want = reference.topk_keys(q_codes, k_codes, L, key_padding_mask=mask, mode=mode, q=q, k=k, n_bits=n_bits)
    assert got.dtype == torch.int32 and got.shape == (2, 2, length, L)
    assert torch.equal(got.cpu(), want.cpu())
    if mask is not None:
        chosen = got.clamp_min(0).long()
        padded = mask[:, None, None, :].expand(*got.shape[:3], length).gather(-1, chosen)
        assert not (padded & (got >= 0)).any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("queries, length, L", [(97, 97, 64), (300, 300, 64), (300, 300, 250), (300, 97, 64),
                                                (40, 300, 64)])
@pytest.mark.parametrize("n_bits", [32, 20, 64])
@pytest.mark.parametrize("distinct", [None, 3])
def test_topk_matches_reference_on_long_rows(device, queries, length, L, n_bits, distinct):
    """Rows long enough for the CPU's vector loops (16 and 32 keys a step, away from
    either end of the row) and for the keys beyond the shorter side of the query; more
    queries than keys (a query past the last key) and fewer."""
    _, _, mask = queries_and_keys(2, 2, length, 8, "random", seed=length, device=device)
    q_codes = random_codes(2, 2, queries, 1, seed=n_bits, device=device, n_distinct=distinct)
    k_codes = random_codes(2, 2, length, 1, seed=n_bits + 1, device=device, n_distinct=distinct)
    for padding in (None, mask):
        got = ops.topk_keys(q_codes, k_codes, L, key_padding_mask=padding, n_bits=n_bits)
        want = reference.topk_keys(q_codes, k_codes, L, key_padding_mask=padding, n_bits=n_bits)
        assert torch.equal(got.cpu(), want.cpu())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("words, n_bits", [(1, 32), (1, 64), (4, 256), (4, 200)])
@pytest.mark.parametrize("L", [1, 40, 150])
def test_topk_matches_reference_when_thresholds_jump(device, words, n_bits, L):
    """Neighbouring queries whose L-th best scores lie far apart (all bits, none, random),
    in an order that moves the threshold up and down by every distance: the CPU starts
    each row's search at the last row's threshold."""
    generator = torch.Generator().manual_seed(words * n_bits + L)
    length = 200
    k_codes = random_codes(1, 2, length, words, seed=n_bits, device="cpu")
    common = k_codes[0, 0, 0]
    k_codes[:, :, : length // 2] = common  # half the keys share one code
    choice = torch.randint(0, 4, (1, 2, length), generator=generator)
    q_codes = random_codes(1, 2, length, words, seed=n_bits + 1, device="cpu")
    q_codes = torch.where((choice == 0)[..., None], common, q_codes)  # threshold: every bit
    q_codes = torch.where((choice == 1)[..., None], ~common, q_codes)  # the common keys score 0
    partial = common ^ (torch.randint(0, 2, (1, 2, length, words), generator=generator) << 5)
    q_codes = torch.where((choice == 2)[..., None], partial, q_codes)
    _, _, mask = queries_and_keys(1, 2, length, 8, "random", seed=L, device="cpu")
    for padding in (None, mask):
        got = ops.topk_keys(q_codes.to(device), k_codes.to(device), L,
                            key_padding_mask=None if padding is None else padding.to(device), n_bits=n_bits)
        want = reference.topk_keys(q_codes, k_codes, L, key_padding_mask=padding, n_bits=n_bits)
        assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("device", DEVICES)
def test_topk_with_L_larger_than_T_fills_minus_one(device):
    codes = random_codes(1, 1, 5, 1, seed=7, device=device)
    got = ops.topk_keys(codes, codes, 8)
    assert got[..., :5].ge(0).all() and got[..., 5:].eq(-1).all()
    assert torch.equal(got[..., :5].sort(-1).values.cpu(), torch.arange(5).expand(1, 1, 5, 5).int())
    assert got[0, 0, :, 0].tolist() == list(range(5))  # each query's own code is its best match


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_bits", [32, 64])
def test_topk_without_keys_fills_minus_one(device, n_bits):
    queries, no_keys = random_codes(1, 2, 3, 1, seed=8, device=device), random_codes(1, 2, 0, 1, seed=9, device=device)
    got = ops.topk_keys(queries, no_keys, 4, n_bits=n_bits)
    assert got.shape == (1, 2, 3, 4) and got.eq(-1).all()


def test_topk_ties_go_to_the_nearest_then_the_smaller_index():
    codes = torch.zeros(1, 1, 6, 1, dtype=torch.int64)  # every key ties
    got = ops.topk_keys(codes, codes, 6)
    assert got[0, 0, 2].tolist() == [2, 1, 3, 0, 4, 5]
    assert got[0, 0, 5].tolist() == [5, 4, 3, 2, 1, 0]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    q, k, mask = queries_and_keys(2, 2, 9, 8, "middle", seed=8, device=device, dtype=torch.float32)
    proj = projections(70, 9, seed=9, device=device, dtype=torch.float32)
    torch.library.opcheck(op.mips_transform, (q, "xbox_qnf", "query", mask, k, 2, 0.75))
    torch.library.opcheck(op.alsh_hash, (k, "simple_lsh", "key", proj, mask, None, 2, 0.75))
    codes = op.alsh_hash(k, "simple_lsh", "key", proj, mask, None, 2, 0.75)
    torch.library.opcheck(op.topk_keys, (codes, codes, 4, mask, "hamming", None, None, None))
    torch.library.opcheck(op.topk_keys, (codes, codes, 4, mask, "bucket", q, k, 60))


@pytest.mark.parametrize("device", DEVICES)
def test_compiles_without_graph_breaks(device):
    q, k, mask = queries_and_keys(2, 2, 12, 8, "end", seed=10, device=device, dtype=torch.float32)
    proj = projections(64, 9, seed=11, device=device, dtype=torch.float32)

    def select(q, k):
        q_codes = ops.alsh_hash(q, "xbox", "query", proj, key_padding_mask=mask)
        k_codes = ops.alsh_hash(k, "xbox", "key", proj, key_padding_mask=mask)
        return ops.topk_keys(q_codes, k_codes, 5, key_padding_mask=mask)

    assert torch.equal(torch.compile(select, fullgraph=True)(q, k), select(q, k))


def _bad_calls():
    x = torch.randn(1, 2, 5, 4)
    proj = torch.randn(16, 5)
    codes = torch.zeros(1, 2, 5, 1, dtype=torch.int64)
    return {
        "unknown scheme": (lambda: ops.mips_transform(x, "minhash", "key"), ValueError, "scheme"),
        "unknown role": (lambda: ops.mips_transform(x, "xbox", "value"), ValueError, "role"),
        "x wrong rank": (lambda: ops.alsh_hash(x[0], "xbox", "key", proj), ValueError, "x"),
        "qnf without keys": (lambda: ops.mips_transform(x, "xbox_qnf", "query"), ValueError, "keys"),
        "projection width": (lambda: ops.alsh_hash(x, "xbox", "key", torch.randn(16, 4)), ValueError, "projections"),
        "too many bits": (lambda: ops.alsh_hash(x, "xbox", "key", torch.randn(257, 5)), ValueError, "projections"),
        "no bits": (lambda: ops.alsh_hash(x, "xbox", "key", torch.randn(0, 5)), ValueError, "projections"),
        "n_bits out of range": (lambda: ops.topk_keys(codes, codes, 2, n_bits=65), ValueError, "n_bits"),
        "codes mismatch": (lambda: ops.topk_keys(codes, codes[:, :1], 2), ValueError, "k_codes"),
        "codes not int64": (lambda: ops.topk_keys(codes.int(), codes, 2), TypeError, "q_codes"),
        "negative L": (lambda: ops.topk_keys(codes, codes, -1), ValueError, "L"),
        "unknown mode": (lambda: ops.topk_keys(codes, codes, 2, mode="lsh"), ValueError, "mode"),
        "bucket without q": (lambda: ops.topk_keys(codes, codes, 2, mode="bucket"), ValueError, "q"),
        "mask shape": (lambda: ops.topk_keys(codes, codes, 2, key_padding_mask=torch.zeros(1, 4, dtype=torch.bool)),
                       ValueError, "key_padding_mask"),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
def test_bad_input_is_named(case):
    call, error, name = _bad_calls()[case]
    with pytest.raises(error, match=rf"\b{name}\b"):
        call()


def test_direct_op_call_with_unknown_scheme_raises():
    with pytest.raises(ValueError, match="scheme"):
        op.mips_transform(torch.randn(1, 1, 2, 3), "minhash", "key", None, None, 2, 0.75)


def _bad_direct_topk_calls():
    """Direct torch.ops calls the C++ guards must refuse (the wrapper's checks are skipped)."""
    codes = torch.zeros(2, 2, 5, 1, dtype=torch.int64)
    q = torch.randn(2, 2, 5, 8)

    def call(q_codes=codes, k_codes=codes, mask=None, mode="hamming", q=None, k=None):
        return lambda: op.topk_keys(q_codes, k_codes, 3, mask, mode, q, k, None)

    five_words = torch.zeros(1, 1, 5, 5, dtype=torch.int64)  # the kernels hold at most 4
    return {
        "too many words": (call(five_words, five_words), ValueError, "words"),
        "mask shape": (call(mask=torch.zeros(2, 4, dtype=torch.bool)), ValueError, "key_padding_mask"),
        "mask dtype": (call(mask=torch.zeros(2, 5)), TypeError, "key_padding_mask"),
        "bucket q batch": (call(mode="bucket", q=q[:1], k=q), ValueError, "q"),
        "bucket k dtype": (call(mode="bucket", q=q, k=q.double()), TypeError, "k"),
    }


@pytest.mark.parametrize("case", list(_bad_direct_topk_calls()))
def test_direct_topk_call_with_bad_input_raises(case):
    call, error, name = _bad_direct_topk_calls()[case]
    with pytest.raises(error, match=rf"\b{name}\b"):
        call()


def test_direct_transform_call_checks_the_mask():
    with pytest.raises(ValueError, match="key_padding_mask"):
        op.mips_transform(torch.randn(2, 1, 5, 3), "xbox", "key", torch.zeros(2, 4, dtype=torch.bool), None, 2, 0.75)


@requires_cuda
def test_bucket_mode_names_q_or_k_on_another_device():
    codes = torch.zeros(1, 1, 5, 1, dtype=torch.int64, device="cuda")
    q = torch.randn(1, 1, 5, 8, device="cuda")
    with pytest.raises(ValueError, match=r"\bk\b"):
        ops.topk_keys(codes, codes, 2, mode="bucket", q=q, k=q.cpu())
    with pytest.raises(ValueError, match=r"\bk\b"):  # the C++ guard, for direct calls
        op.topk_keys(codes, codes, 2, None, "bucket", q, q.cpu(), None)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_dot_products_rank_last_in_bucket_mode(device):
    """NaN ranks after every number (lsh_select.h): a total order, so every slot is written
    and the CPU and CUDA agree with the reference."""
    generator = torch.Generator().manual_seed(18)
    q = torch.randn(2, 2, 12, 8, generator=generator)
    k = torch.randn(2, 2, 12, 8, generator=generator)
    k[:, :, ::3, 0] = float("nan")
    q[:, :, 5, 1] = float("nan")  # a query whose every candidate scores NaN
    q, k = q.to(device), k.to(device)
    codes = torch.zeros(2, 2, 12, 1, dtype=torch.int64, device=device)  # every key is a candidate
    got = ops.topk_keys(codes, codes, 10, mode="bucket", q=q, k=k)
    want = reference.topk_keys(codes, codes, 10, mode="bucket", q=q, k=k)
    assert torch.equal(got.cpu(), want.cpu())
    numeric_rows = [i for i in range(12) if i != 5]
    assert got[:, :, numeric_rows, :8].remainder(3).ne(0).all()  # the 8 keys without NaN come first
    assert got[:, :, numeric_rows, 8:].remainder(3).eq(0).all()


@requires_cuda
def test_bucket_mode_ranks_near_ties_as_the_cpu_does():
    """Keys that are permutations of one vector against a constant query: their q . k are
    equal in exact arithmetic, so the order rests on rounding alone. Both devices compute the
    same float32 expression (lsh_select.h: no fused multiply-add), so they agree bit for bit."""
    generator = torch.Generator().manual_seed(19)
    base = torch.randn(64, generator=generator)
    k = torch.stack([base[torch.randperm(64, generator=generator)] for _ in range(200)]).view(1, 1, 200, 64)
    q = torch.full((1, 1, 200, 64), 0.37)
    codes = torch.zeros(1, 1, 200, 1, dtype=torch.int64)
    on_cpu = ops.topk_keys(codes, codes, 50, mode="bucket", q=q, k=k)
    on_cuda = ops.topk_keys(codes.cuda(), codes.cuda(), 50, mode="bucket", q=q.cuda(), k=k.cuda())
    assert torch.equal(on_cuda.cpu(), on_cpu)


@requires_cuda
@pytest.mark.parametrize("keys, words", [(5120, 1), (5121, 1), (2560, 2), (2561, 2)])
@pytest.mark.parametrize("padding", PADDINGS)
def test_hamming_topk_with_and_without_staged_key_codes(keys, words, padding):
    """The CUDA kernel copies a (batch, head)'s key codes to shared memory when they fit in
    40 KiB (keys * words <= 5120) and every row of a block has that (batch, head); 7
    queries per (batch, head) make blocks of 4 rows that straddle two. Both ways agree
    with the CPU."""
    mask = padding_mask(padding, 2, keys, torch.Generator().manual_seed(keys))
    q_codes = random_codes(2, 3, 7, words, seed=keys, device="cpu", n_distinct=5)
    k_codes = random_codes(2, 3, keys, words, seed=keys + 1, device="cpu", n_distinct=5)
    on_cpu = ops.topk_keys(q_codes, k_codes, 40, key_padding_mask=mask)
    on_cuda = ops.topk_keys(q_codes.cuda(), k_codes.cuda(), 40,
                            key_padding_mask=None if mask is None else mask.cuda())
    assert torch.equal(on_cuda.cpu(), on_cpu)
