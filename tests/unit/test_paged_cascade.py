"""Shared-prefix (cascade) paged attention against a dense reference.

Groups of sequences share the pool slots of a leading run (as the radix cache
hands them out); each member then has its own slots. Slots are drawn from a
shuffled pool so every run is scattered. Every output row must equal an
explicit softmax(q k^T) v over the member's contiguous K/V within 1e-5.
"""

from __future__ import annotations

from unittest import mock

import hypothesis.strategies as st
import pytest
import torch
from helpers.reference import reference_attention
from hypothesis import HealthCheck, event, given, settings

from radixlm.attention import cascade
from radixlm.attention.cascade import SharedPrefix, attention_lse, find_shared_prefixes
from radixlm.attention.paged import PagedContext
from radixlm.kvcache.pool import KVPool, PoolShape
from radixlm.native import kernels

D = 16
TOL = 1e-5


def run_case(groups, num_heads=6, num_kv_heads=2, seed=0, native=False):
    """Build and check one batch; returns the context.

    groups: list of (shared_len, members); a member is (used, own_cached, extend): it
    caches the first `used` tokens of the group's shared run (used == shared_len
    when own_cached > 0), then `own_cached` tokens of its own, and adds `extend`
    new tokens. A group with shared_len 0 is a set of unrelated sequences.
    """
    gen = torch.Generator().manual_seed(seed)
    total = sum(s + sum(o + e for _, o, e in m) for s, m in groups)
    pool = KVPool(PoolShape(1, num_kv_heads, D, torch.float32), total, debug=True)
    free = pool.alloc(total)
    free = free[torch.randperm(total, generator=gen)]
    at = 0

    def take(n):
        nonlocal at
        at += n
        return free[at - n : at]

    def rand(n, heads):
        return torch.randn(n, heads, D, generator=gen)

    seqs = []  # (slots, k, v, q, prefix_len)
    for shared_len, members in groups:
        s_slots, s_k, s_v = (
            take(shared_len),
            rand(shared_len, num_kv_heads),
            rand(shared_len, num_kv_heads),
        )
        pool.set_kv(0, s_slots, s_k, s_v)
        for used, own, ext in members:
            assert used <= shared_len and (own == 0 or used == shared_len)
            o_slots = take(own + ext)
            o_k, o_v = rand(own + ext, num_kv_heads), rand(own + ext, num_kv_heads)
            pool.set_kv(0, o_slots[:own], o_k[:own], o_v[:own])
            slots = torch.cat([s_slots[:used], o_slots])
            k, v = torch.cat([s_k[:used], o_k]), torch.cat([s_v[:used], o_v])
            seqs.append((slots, k, v, rand(ext, num_heads), used + own))
    order = torch.randperm(len(seqs), generator=gen).tolist()  # interleave the groups
    seqs = [seqs[i] for i in order]
    prefix = [p for *_, p in seqs]
    extend = [q.shape[0] for *_, q, _ in seqs]
    out_loc = torch.cat([s[p:] for s, *_, p in seqs])
    ctx = PagedContext(pool, [s for s, *_ in seqs], prefix, extend, out_loc, check=True,
                       native=native)  # fmt: skip
    q = torch.cat([q for *_, q, _ in seqs])
    k_new = torch.cat([k[p:] for _, k, _, _, p in seqs])
    v_new = torch.cat([v[p:] for _, _, v, _, p in seqs])
    scale = D**-0.5
    out = ctx.attend(0, q, k_new, v_new, scale)
    at = 0
    for _, k, v, q_i, p in seqs:
        n = q_i.shape[0]
        assert (
            out[at : at + n] - reference_attention(q_i, k, v, p, scale)
        ).abs().max().item() <= TOL
        at += n
    return ctx


def shared_summary(ctx):
    """Sorted (number of members, shared_len) of the context's shared groups."""
    return sorted((len(sp.members), sp.shared_len) for sp in ctx.metadata.shared)


@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(4, 4), (6, 2), (9, 3)])
@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("native", [False, True])
def test_decode_groups_with_unrelated_sequences(num_heads, num_kv_heads, seed, native):
    groups = [
        (300, [(300, o, 1) for o in (0, 5, 17, 30)]),
        (200, [(200, o, 1) for o in (3, 3, 40, 0)]),
        (0, [(0, o, 1) for o in (0, 90, 250)]),
    ]
    ctx = run_case(groups, num_heads, num_kv_heads, seed, native)
    assert shared_summary(ctx) == [(4, 200), (4, 300)]
    # The compiled kernel (when it builds here) reads own keys in place: no padded groups.
    assert (ctx.metadata.decode is not None) == (native and kernels() is not None)


@pytest.mark.parametrize("shared_len", [64, 65, 127, 513, 1030])
@pytest.mark.parametrize("native", [False, True])
def test_decode_shared_lengths(shared_len, native):
    owns = (0, 1, 7, 2, 60, 11, 4, 9, 0, 3)
    ctx = run_case([(shared_len, [(shared_len, o, 1) for o in owns])], native=native)
    assert shared_summary(ctx) == [(10, shared_len)]


@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(4, 4), (9, 3)])
def test_extends_over_a_shared_cached_prefix(num_heads, num_kv_heads):
    groups = [
        (256, [(256, 0, 9), (256, 0, 33), (256, 12, 5), (256, 0, 1)]),
        (0, [(0, 0, 20), (0, 40, 7)]),
    ]
    ctx = run_case(groups, num_heads, num_kv_heads, seed=3)
    assert shared_summary(ctx) == [(4, 256)]


def test_members_with_different_prefix_lengths_share_the_shortest():
    # All four cache a different amount of the run: the shared part is capped at 180.
    groups = [(400, [(400, 0, 1), (400, 7, 3), (180, 0, 6), (250, 0, 1)])]
    ctx = run_case(groups, seed=4)
    assert shared_summary(ctx) == [(4, 180)]


def test_an_outlier_is_left_out_when_that_saves_more():
    # Sharing 70 with all five saves 4 * 70; sharing 600 with four saves 3 * 600.
    groups = [(600, [(600, 0, 1), (600, 2, 1), (600, 9, 2), (600, 0, 1), (70, 0, 1)])]
    ctx = run_case(groups, seed=5)
    assert shared_summary(ctx) == [(4, 600)]
    (sp,) = ctx.metadata.shared
    assert all(ctx.metadata.prefix_lens[i] >= sp.shared_len for i in sp.members)


def test_shared_runs_of_different_lengths_in_one_call():
    groups = [
        (s, [(s, o, e) for o, e in ((0, 1), (3, 1), (5, 2), (1, 1))]) for s in (300, 290, 4000)
    ]
    ctx = run_case(groups, seed=6)
    assert shared_summary(ctx) == [(4, 290), (4, 300), (4, 4000)]
    batches = sorted(ctx.metadata.shared_batches, key=lambda b: b.batch)
    assert [(b.batch, b.kv_len) for b in batches] == [(1, 4000), (2, 300)]
    assert batches[1].hidden is not None


def test_short_or_unprofitable_runs_use_the_plain_path():
    assert shared_summary(run_case([(63, [(63, 0, 1)] * 12)])) == []
    assert shared_summary(run_case([(300, [(300, 0, 1)] * 2)])) == []  # saves 300 < 512
    assert shared_summary(run_case([(512, [(512, 0, 1)] * 2)])) == [(2, 512)]


def test_thresholds_are_read_at_build_time(monkeypatch):
    monkeypatch.setattr(cascade, "SHARED_MIN_TOKENS", 4)
    monkeypatch.setattr(cascade, "SHARED_MIN_SAVED", 1)
    ctx = run_case([(5, [(5, 0, 1), (5, 1, 2)]), (9, [(9, 0, 1), (4, 0, 3), (4, 0, 1)])])
    assert shared_summary(ctx) == [(2, 5), (3, 4)]


def test_same_first_slot_but_an_early_divergence_is_not_shared(monkeypatch):
    monkeypatch.setattr(cascade, "SHARED_MIN_SAVED", 100)
    a = torch.arange(1, 201)
    b = a.clone()
    b[10:] += 1000
    assert find_shared_prefixes([a, b], [199, 199]) == []
    c = torch.cat([a[:150], torch.arange(2000, 2049)])
    found = find_shared_prefixes([a, b, c, a.clone()], [199, 199, 199, 199])
    assert found == [SharedPrefix((0, 2, 3), 150)]


def test_attention_lse_in_chunks_matches_softmax(monkeypatch):
    gen = torch.Generator().manual_seed(7)
    b, hkv, nq, g, length = 2, 3, 11, 2, 40
    q = torch.randn(b, hkv, nq, g, D, generator=gen)
    k, v = (
        torch.randn(b, hkv, length, D, generator=gen),
        torch.randn(b, hkv, length, D, generator=gen),
    )
    hidden = torch.rand(b, 1, nq, 1, length, generator=gen) < 0.5
    hidden[..., 0] = False  # every query sees a key
    scores = torch.einsum("bhqgd,bhld->bhqgl", q.double(), k.double()) * 0.3
    scores = scores.masked_fill(hidden, float("-inf"))
    want_o = torch.einsum("bhqgl,bhld->bhqgd", scores.softmax(-1), v.double())
    want_lse = scores.logsumexp(-1)
    for chunk in (1 << 22, 3 * b * hkv * g * length):
        monkeypatch.setattr(cascade, "SCORE_CHUNK_ELEMENTS", chunk)
        o, lse = attention_lse(q, k, v, 0.3, hidden)
        assert (o - want_o).abs().max().item() <= TOL
        assert (lse - want_lse).abs().max().item() <= TOL


def test_plan_shared_batches():
    assert cascade.plan_shared_batches([1024] * 4) == [[0, 1, 2, 3]]
    assert cascade.plan_shared_batches([300, 4000, 290]) == [[1], [0, 2]]
    batches = cascade.plan_shared_batches([64, 5000, 70, 2000, 1990])
    assert sorted(i for b in batches for i in b) == list(range(5))


# The prefill batch on which SGLang's bench_serving (generated-shared-prefix, 4 groups x 8,
# system prompt 1024, question 64, all at once) crashed the engine on SmolLM2 (9 query heads,
# 3 KV heads): three groups of seven, whose members cache all of their group's run or all
# but its last token, then extend by their question. (cached, [extend of each member]):
BENCH_SERVING_BATCH = [
    (1087, [69, 65, 64], 1086, [70, 68, 70, 68]),
    (1075, [64, 71, 68, 65], 1074, [74, 69, 74]),
    (1069, [65, 68, 68, 70, 71, 64], 1068, [69]),
]


def test_bench_serving_batch_that_crashed():
    # The runs (1086, 1074, 1068) share one padded call with a key mask; its 478 queries are
    # attended in chunks, and each chunk must see the whole mask.
    groups = [
        (run, [(run, 0, e) for e in full] + [(short, 0, e) for e in rest])
        for run, full, short, rest in BENCH_SERVING_BATCH
    ]
    ctx = run_case(groups, num_heads=9, num_kv_heads=3, seed=12)
    assert shared_summary(ctx) == [(7, 1068), (7, 1074), (7, 1086)]
    (sb,) = ctx.metadata.shared_batches
    assert sb.hidden is not None
    assert sb.batch * 9 * sb.q_len * sb.kv_len > cascade.SCORE_CHUNK_ELEMENTS  # chunked


@st.composite
def cascade_batches(draw):
    """Groups for `run_case`: shared runs of random lengths, members that cache all or part
    of their run (own part possibly empty) and extend by one token (decode) or more."""
    groups = []
    for _ in range(draw(st.integers(1, 4))):
        run = draw(st.integers(0, 40))
        members = []
        for _ in range(draw(st.integers(1, 5))):
            used = draw(st.integers(0, run)) if draw(st.booleans()) else run
            own = draw(st.integers(0, 6)) if used == run else 0
            extend = 1 if draw(st.booleans()) else draw(st.integers(1, 12))
            members.append((used, own, extend))
        groups.append((run, members))
    return groups


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    groups=cascade_batches(),
    heads=st.sampled_from([(4, 4), (6, 2), (9, 3)]),
    min_tokens=st.integers(1, 8),
    min_saved=st.integers(1, 24),
    chunk=st.sampled_from([1, 64, 300, 1 << 22]),
    seed=st.integers(0, 2**16),
)
def test_cascade_matches_dense_attention_on_random_batches(
    groups, heads, min_tokens, min_saved, chunk, seed
):
    # Thresholds this low make short runs shared; chunk sizes this small split every call.
    with (
        mock.patch.object(cascade, "SHARED_MIN_TOKENS", min_tokens),
        mock.patch.object(cascade, "SHARED_MIN_SAVED", min_saved),
        mock.patch.object(cascade, "SCORE_CHUNK_ELEMENTS", chunk),
    ):
        ctx = run_case(groups, *heads, seed=seed)  # checks every row against the reference
    for sp in ctx.metadata.shared:
        assert all(ctx.metadata.prefix_lens[i] >= sp.shared_len for i in sp.members)
    # --hypothesis-show-statistics tells how often each path was drawn.
    event(f"shared groups: {len(ctx.metadata.shared)}")
    event(f"masked shared batch: {any(b.hidden is not None for b in ctx.metadata.shared_batches)}")
