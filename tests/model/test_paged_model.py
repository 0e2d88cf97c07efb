"""The tiny models through PagedContext: reusing a cached prefix gives the same logits.

Reference: one full forward of the whole sequence with the dense backend.
Paged runs use a KV pool whose slots are shuffled, so a sequence's K/V are
scattered across the pool.
"""

from __future__ import annotations

import pytest
import torch
from helpers.reference import full_logits, tokens

from radixlm.attention.paged import PagedContext
from radixlm.config import LoadConfig
from radixlm.kvcache.pool import KVPool
from radixlm.kvcache.radix_cache import RadixCache
from radixlm.loader import LoadedModel, load_model

TOL = 1e-4


@pytest.fixture(scope="module", params=["llama3", "qwen2"])
def loaded(request, tiny_model_factory) -> LoadedModel:
    path = tiny_model_factory(request.param)
    return load_model(LoadConfig(model=str(path), dtype="float32", device="cpu"), progress=False)


def scattered_pool(loaded: LoadedModel, total: int = 256, seed: int = 0) -> KVPool:
    """A pool whose allocator hands out slots in a shuffled order."""
    pool = KVPool.for_model(loaded.config, loaded.dtype, loaded.device, max_total_tokens=total)
    slots = pool.alloc(total)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    pool.free(slots[order])
    return pool


def paged_forward(loaded, pool, seq_slots, prefix_lens, new_ids: list[list[int]]):
    """One forward of each sequence's new tokens; returns logits [T, vocab]."""
    extend = [len(x) for x in new_ids]
    out_loc = torch.cat([s[p:] for s, p in zip(seq_slots, prefix_lens, strict=True)])
    ctx = PagedContext(pool, seq_slots, prefix_lens, extend, out_loc, check=True)
    ids = torch.tensor([t for x in new_ids for t in x])
    return loaded.model(ids, ctx.positions, ctx)


@pytest.mark.parametrize("prefix_len", [1, 17, 31])
def test_extend_over_cached_prefix_matches_full_recompute(loaded, prefix_len):
    ids = tokens(32, seed=prefix_len, vocab=loaded.config.vocab_size)
    pool = scattered_pool(loaded)
    slots = pool.alloc(len(ids))
    paged_forward(loaded, pool, [slots[:prefix_len]], [0], [ids[:prefix_len]])
    got = paged_forward(loaded, pool, [slots], [prefix_len], [ids[prefix_len:]])
    expected = full_logits(loaded, ids)[prefix_len:]
    assert (got - expected).abs().max().item() <= TOL


def test_two_requests_share_a_prefix_from_the_radix_cache(loaded):
    vocab = loaded.config.vocab_size
    system, q1, q2 = tokens(20, 1, vocab), tokens(7, 2, vocab), tokens(12, 3, vocab)
    pool = scattered_pool(loaded)
    cache = RadixCache(pool)
    first = system + q1
    slots = pool.alloc(len(first))
    paged_forward(loaded, pool, [slots], [0], [first])
    assert cache.insert(first, slots) == 0
    # Two new requests: each reuses the system prompt, both extend in one batch.
    reqs = [system + q2, system + q1[:3] + q2]
    seq_slots, prefix_lens, nodes = [], [], []
    for key in reqs:
        m = cache.match_prefix(key)
        cache.inc_lock_ref(m.last_node)
        nodes.append(m.last_node)
        seq_slots.append(torch.cat([m.slot_indices, pool.alloc(len(key) - m.prefix_len)]))
        prefix_lens.append(m.prefix_len)
    assert prefix_lens == [20, 23]
    new_ids = [k[p:] for k, p in zip(reqs, prefix_lens, strict=True)]
    got = paged_forward(loaded, pool, seq_slots, prefix_lens, new_ids)
    at = 0
    for key, p in zip(reqs, prefix_lens, strict=True):
        n = len(key) - p
        assert (got[at : at + n] - full_logits(loaded, key)[p:]).abs().max().item() <= TOL
        at += n
    own = [s[p:] for s, p in zip(seq_slots, prefix_lens, strict=True)]
    cache.check_integrity(held_by_requests=own)
    for node in nodes:
        cache.dec_lock_ref(node)


def test_batched_token_by_token_decode_matches_full_recompute(loaded):
    vocab = loaded.config.vocab_size
    prompts = [tokens(n, seed=10 + n, vocab=vocab) for n in (5, 13, 9)]
    steps = 6
    pool = scattered_pool(loaded)
    seqs = [list(p) for p in prompts]
    slots = [pool.alloc(len(p)) for p in prompts]
    paged_forward(loaded, pool, slots, [0, 0, 0], prompts)  # batched prefill, no prefix
    for step in range(steps):
        new = tokens(3, seed=100 + step, vocab=vocab)
        prefix_lens = [len(s) for s in seqs]
        slots = [torch.cat([s, pool.alloc(1)]) for s in slots]
        for seq, t in zip(seqs, new, strict=True):
            seq.append(t)
        got = paged_forward(loaded, pool, slots, prefix_lens, [[t] for t in new])
        for row, seq in enumerate(seqs):
            expected = full_logits(loaded, seq)[-1]
            assert (got[row] - expected).abs().max().item() <= TOL
