"""PagedContext against a naive dense causal attention on the same K/V.

Sequences get random prefix lengths and shuffled (scattered) slots; the
prefix K/V are written into the pool first, then one forward of new tokens
runs through `PagedContext.attend` and is compared per sequence with an
explicit softmax(q k^T) v over the contiguous K/V.
"""

from __future__ import annotations

import pytest
import torch
from helpers.reference import reference_attention

from radixlm.attention.groups import plan_groups
from radixlm.attention.paged import PagedAttentionMetadata, PagedContext
from radixlm.kvcache.pool import PAD_SLOT, KVPool, PoolShape

D = 16


def scenario(prefix_lens, extend_lens, num_heads, num_kv_heads, seed=0):
    """Random K/V and queries for each sequence; prefixes stored in the pool at scattered slots."""
    gen = torch.Generator().manual_seed(seed)
    total = sum(prefix_lens) + sum(extend_lens)
    pool = KVPool(PoolShape(1, num_kv_heads, D, torch.float32), total + 7, debug=True)
    slots = pool.alloc(total + 7)
    slots = slots[torch.randperm(slots.numel(), generator=gen)][:total]
    seqs, at = [], 0
    for p, e in zip(prefix_lens, extend_lens, strict=True):
        s = slots[at : at + p + e]
        at += p + e
        k = torch.randn(p + e, num_kv_heads, D, generator=gen)
        v = torch.randn(p + e, num_kv_heads, D, generator=gen)
        q = torch.randn(e, num_heads, D, generator=gen)
        pool.set_kv(0, s[:p], k[:p], v[:p])
        seqs.append((s, k, v, q))
    return pool, seqs


def run_paged(pool, seqs, prefix_lens, extend_lens, scale, native=False):
    out_loc = torch.cat([s[p:] for (s, *_), p in zip(seqs, prefix_lens, strict=True)])
    ctx = PagedContext(pool, [s for s, *_ in seqs], prefix_lens, extend_lens, out_loc,
                       check=True, native=native)  # fmt: skip
    q = torch.cat([q for *_, q in seqs])
    k = torch.cat([k[p:] for (_, k, _, _), p in zip(seqs, prefix_lens, strict=True)])
    v = torch.cat([v[p:] for (_, _, v, _), p in zip(seqs, prefix_lens, strict=True)])
    return ctx, ctx.attend(0, q, k, v, scale)


def assert_matches_reference(
    prefix_lens, extend_lens, num_heads=4, num_kv_heads=2, seed=0, native=False
):
    """Run the batch (the plain-torch path unless `native`); assert it matches per sequence."""
    pool, seqs = scenario(prefix_lens, extend_lens, num_heads, num_kv_heads, seed)
    scale = D**-0.5
    ctx, out = run_paged(pool, seqs, prefix_lens, extend_lens, scale, native)
    assert out.shape == (sum(extend_lens), num_heads, D)
    at = 0
    for (_, k, v, q), p, e in zip(seqs, prefix_lens, extend_lens, strict=True):
        expected = reference_attention(q, k, v, p, scale)
        assert (out[at : at + e] - expected).abs().max().item() <= 1e-5
        at += e
    return ctx


@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(4, 4), (4, 2), (6, 2), (3, 1)])
def test_single_extend_with_prefix(num_heads, num_kv_heads):
    assert_matches_reference([13], [9], num_heads, num_kv_heads)


def test_single_prefill_without_prefix_uses_causal_flag():
    ctx = assert_matches_reference([0], [17])
    assert ctx.metadata.groups[0].is_causal and ctx.metadata.groups[0].mask is None


def test_equal_prefills_without_prefix_share_the_causal_flag():
    """Several whole prompts of one length: one unpadded group, SDPA's own causal mask."""
    ctx = assert_matches_reference([0, 0, 0], [17, 17, 17], seed=3)
    (group,) = ctx.metadata.groups
    assert group.batch == 3 and group.is_causal and group.mask is None


def test_unequal_or_cached_prefills_keep_the_mask():
    for prefix, extend in (([0, 0], [17, 12]), ([0, 5], [17, 12])):
        ctx = assert_matches_reference(prefix, extend, seed=4)
        assert not any(g.is_causal and g.batch > 1 for g in ctx.metadata.groups)


@pytest.mark.parametrize("seed", range(6))
def test_random_mixed_batches(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    b = int(torch.randint(1, 7, (1,), generator=gen))
    prefix = torch.randint(0, 40, (b,), generator=gen).tolist()
    extend = torch.randint(1, 12, (b,), generator=gen).tolist()
    if seed % 2:  # some sequences decode, others extend
        extend = [1 if i % 2 else e for i, e in enumerate(extend)]
    assert_matches_reference(prefix, extend, num_heads=6, num_kv_heads=2, seed=seed)


@pytest.mark.parametrize("seed", range(3))
def test_batched_decode_variable_lengths(seed):
    gen = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, 60, (9,), generator=gen).tolist()
    ctx = assert_matches_reference(prefix, [1] * 9, num_heads=9, num_kv_heads=3, seed=seed)
    assert all(g.q_len == 1 for g in ctx.metadata.groups)


def test_batched_decode_equal_lengths_is_one_unmasked_call():
    ctx = assert_matches_reference([20] * 5, [1] * 5)
    (group,) = ctx.metadata.groups
    assert group.mask is None and group.out_index is None and group.q_index is None


def test_extremely_uneven_batch_is_split_into_groups():
    ctx = assert_matches_reference([3, 500, 0, 2], [40, 1, 300, 1])
    assert len(ctx.metadata.groups) >= 2


def test_new_kv_is_written_at_out_cache_loc():
    pool, seqs = scenario([5, 0], [3, 4], 4, 2)
    run_paged(pool, seqs, [5, 0], [3, 4], D**-0.5)
    k_buf, v_buf = pool.get_kv(0)
    for s, k, v, _ in seqs:
        assert torch.equal(k_buf[s], k) and torch.equal(v_buf[s], v)
    assert torch.count_nonzero(k_buf[PAD_SLOT]) == 0


def test_metadata_positions_and_csr():
    slots = [torch.tensor([5, 3, 9]), torch.tensor([7]), torch.tensor([2, 8, 4, 6])]
    meta = PagedAttentionMetadata.build(
        slots, [1, 0, 2], [2, 1, 2], torch.tensor([3, 9, 7, 4, 6]), 2, torch.device("cpu"), True
    )
    assert meta.positions.tolist() == [1, 2, 0, 2, 3]
    assert meta.last_token_indices.tolist() == [1, 2, 4]
    assert meta.qo_indptr.tolist() == [0, 2, 3, 5]
    assert meta.kv_indptr.tolist() == [0, 3, 4, 8]
    assert meta.kv_indices.tolist() == [5, 3, 9, 7, 2, 8, 4, 6]
    assert meta.seq_lens == (3, 1, 4)


def test_bad_batch_descriptions_raise():
    build = PagedAttentionMetadata.build
    cpu = torch.device("cpu")
    with pytest.raises(ValueError):  # slot count != prefix + extend
        build([torch.tensor([1, 2])], [1], [2], torch.tensor([2, 3]), 1, cpu)
    with pytest.raises(ValueError):  # out_cache_loc length
        build([torch.tensor([1, 2])], [1], [1], torch.tensor([2, 3]), 1, cpu)
    with pytest.raises(ValueError):  # out_cache_loc disagrees with the new slots
        build([torch.tensor([1, 2])], [1], [1], torch.tensor([5]), 1, cpu, check=True)
    with pytest.raises(ValueError):  # no new token
        build([torch.tensor([1])], [1], [0], torch.tensor([], dtype=torch.int64), 1, cpu)


def test_plan_groups():
    assert plan_groups([1] * 4, [100] * 4) == [[0, 1, 2, 3]]
    assert plan_groups([500, 1], [500, 20000]) == [[0], [1]]
    groups = plan_groups([1] * 6, [10, 9000, 11, 12, 9000, 13])
    assert sorted(i for g in groups for i in g) == list(range(6))


@pytest.mark.parametrize("seed", range(3))
def test_batched_decode_native_kernel(seed):
    gen = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, 300, (9,), generator=gen).tolist()
    assert_matches_reference(prefix, [1] * 9, num_heads=9, num_kv_heads=3, seed=seed, native=True)
