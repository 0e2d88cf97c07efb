"""RadixCache and ChunkCache with exact slot ids: splits, inserts, locks, LRU eviction, pages."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from radixlm.kvcache.chunk_cache import ChunkCache
from radixlm.kvcache.pool import KVPool, PoolShape
from radixlm.kvcache.prefix_cache import IntegrityError
from radixlm.kvcache.radix_cache import RadixCache, common_prefix_len

SHAPE = PoolShape(num_layers=1, num_kv_heads=1, head_dim=2, dtype=torch.float32)


def make_cache(total: int = 64, page_size: int = 1) -> RadixCache:
    return RadixCache(KVPool(SHAPE, total, page_size=page_size, debug=True))


def put(cache: RadixCache, key: list[int], extra_key=None) -> tuple[list[int], int]:
    """Run one request through the protocol: match, lock, alloc, insert, free, unlock.

    Returns the request's slot list and what insert returned.
    """
    m = cache.match_prefix(key, extra_key, record=False)
    cache.inc_lock_ref(m.last_node)
    new = cache.pool.alloc(len(key) - m.prefix_len)
    assert new is not None
    slots = torch.cat([m.slot_indices, new])
    n = cache.insert(key, slots, extra_key)
    aligned = cache.page_aligned_len(len(key))
    cache.pool.free(slots[m.prefix_len : n])
    cache.pool.free(slots[aligned:])
    cache.dec_lock_ref(m.last_node)
    cache.check_integrity()
    return slots.tolist(), n


def edges(cache: RadixCache) -> list[tuple[list[int], list[int]]]:
    """(tokens, slots) of every edge, depth first in key order."""
    out = []

    def walk(node):
        for child in sorted(node.children.values(), key=lambda c: c.key):
            out.append((list(child.key), child.value.tolist()))
            walk(child)

    walk(cache.root)
    return out


def test_common_prefix_len():
    a = (1, 2, 3, 4)
    assert common_prefix_len(a, (1, 2, 9)) == 2
    assert common_prefix_len(a, (1, 2)) == 2
    assert common_prefix_len(a, (5,)) == 0
    assert common_prefix_len(a, ()) == 0
    assert common_prefix_len(a, a) == 4
    assert common_prefix_len(a, (0, 1, 2, 7), start=1) == 2
    assert common_prefix_len(a, (1, 2, 3, 4), end=3) == 3
    long = tuple(range(1000))
    for i in (0, 63, 64, 65, 500, 999):  # mismatches on and around chunk boundaries
        other = (*long[:i], -1, *long[i + 1 :])
        assert common_prefix_len(long, other) == i
        assert common_prefix_len(long, long[:i]) == i
    rng = random.Random(0)
    for _ in range(300):  # against the obvious loop, with offsets and ends
        n = rng.randrange(0, 3000)
        edge = tuple(rng.randrange(3) if rng.random() < 0.01 else 1 for _ in range(n))
        key = tuple(rng.randrange(3) if rng.random() < 0.01 else 1 for _ in range(n + 50))
        start, end = rng.randrange(0, 50), rng.choice([None, rng.randrange(50, n + 50)])
        want = 0
        for x, y in zip(edge, key[start:end], strict=False):
            if x != y:
                break
            want += 1
        assert common_prefix_len(edge, key, start, end) == want


def test_insert_then_match_exact_slots_and_split():
    cache = make_cache()
    slots, n = put(cache, [1, 2, 3, 4, 5])
    assert slots == [1, 2, 3, 4, 5] and n == 0
    m = cache.match_prefix([1, 2, 3, 9])
    assert m.slot_indices.tolist() == [1, 2, 3]
    assert list(m.last_node.key) == [1, 2, 3]  # split so the node ends at the prefix
    assert edges(cache) == [([1, 2, 3], [1, 2, 3]), ([4, 5], [4, 5])]
    cache.check_integrity()


def test_insert_branch_reuses_prefix_slots():
    cache = make_cache()
    put(cache, [1, 2, 3, 4, 5])
    slots, n = put(cache, [1, 2, 3, 7, 8])
    assert n == 3 and slots == [1, 2, 3, 6, 7]
    assert edges(cache) == [([1, 2, 3], [1, 2, 3]), ([4, 5], [4, 5]), ([7, 8], [6, 7])]
    assert cache.total_size == 7 and cache.pool.available_size() == 64 - 7


def test_insert_of_existing_prefix_returns_its_length():
    cache = make_cache()
    put(cache, [1, 2, 3, 4, 5])
    # A request that computed [1, 2, 3] itself (no match) gets duplicates back.
    own = cache.pool.alloc(3)
    assert own.tolist() == [6, 7, 8]
    assert cache.insert([1, 2, 3], own) == 3
    cache.check_integrity(held_by_requests=own)  # the tree did not take them
    cache.pool.free(own)
    cache.check_integrity()
    assert edges(cache) == [([1, 2, 3], [1, 2, 3]), ([4, 5], [4, 5])]


def test_insert_extends_a_leaf():
    cache = make_cache()
    put(cache, [1, 2])
    slots, n = put(cache, [1, 2, 3, 4])
    assert n == 2 and slots == [1, 2, 3, 4]
    assert edges(cache) == [([1, 2], [1, 2]), ([3, 4], [3, 4])]


def test_fully_cached_prompt_matches_everything():
    cache = make_cache()
    put(cache, [5, 6, 7])
    m = cache.match_prefix([5, 6, 7])
    assert m.slot_indices.tolist() == [1, 2, 3] and m.prefix_len == 3
    assert list(m.last_node.key) == [5, 6, 7]
    # Leaving one token to compute: match all but the last token.
    m = cache.match_prefix([5, 6, 7][:-1])
    assert m.slot_indices.tolist() == [1, 2]
    slots, n = put(cache, [5, 6, 7])
    assert n == 3 and slots == [1, 2, 3]


def test_match_miss_and_empty_key():
    cache = make_cache()
    put(cache, [1, 2, 3])
    for key in ([9, 1], [], [2, 3]):
        m = cache.match_prefix(key)
        assert m.prefix_len == 0 and m.last_node is cache.root


def test_key_types_are_interchangeable():
    cache = make_cache()
    put(cache, [1, 2, 3, 4])
    for key in ([1, 2, 3], (1, 2, 3), np.array([1, 2, 3], dtype=np.int32), torch.tensor([1, 2, 3])):
        assert cache.match_prefix(key).slot_indices.tolist() == [1, 2, 3]


def test_insert_copies_key_and_slots():
    cache = make_cache()
    key = np.array([1, 2, 3])
    slots = cache.pool.alloc(3)
    cache.insert(key, slots)
    key[0] = 99
    slots[0] = 42
    assert cache.match_prefix([1, 2, 3]).slot_indices.tolist() == [1, 2, 3]


def test_hit_counters():
    cache = make_cache()
    put(cache, [1, 2, 3, 4])
    cache.match_prefix([1, 2, 9, 9])
    cache.match_prefix([7, 7, 7, 7])
    cache.match_prefix([1, 2, 3, 4], record=False)
    assert cache.tokens_queried == 8 and cache.tokens_hit == 2
    assert cache.hit_rate == 0.25


def test_eviction_takes_least_recently_used_leaf_first():
    cache = make_cache()
    put(cache, [1, 2, 3])  # slots 1..3
    put(cache, [4, 5])  # slots 4, 5
    put(cache, [6, 7])  # slots 6, 7
    cache.match_prefix([1, 2, 3])  # now [4, 5] is the oldest
    assert cache.evict(1) == 2
    assert sorted(cache.pool.free_slots().tolist())[:2] == [4, 5]
    assert cache.match_prefix([4, 5]).prefix_len == 0
    assert cache.evict(2) == 2  # then [6, 7]
    assert cache.match_prefix([6, 7]).prefix_len == 0
    assert cache.match_prefix([1, 2, 3]).prefix_len == 3
    cache.check_integrity()


def test_eviction_climbs_to_parents_that_become_leaves():
    cache = make_cache()
    put(cache, [1, 2, 3, 4])
    put(cache, [1, 2, 5, 6])
    put(cache, [9])
    cache.match_prefix([9])  # the [1, 2] branch is older
    assert cache.evict(6) == 6  # [3, 4], [5, 6], then the parent [1, 2]
    assert edges(cache) == [([9], [7])]
    cache.check_integrity()


def test_locked_path_is_never_evicted():
    cache = make_cache()
    put(cache, [1, 2, 3, 4])
    put(cache, [1, 2, 5, 6])
    m = cache.match_prefix([1, 2, 3, 4])
    assert cache.inc_lock_ref(m.last_node) == 4  # [1, 2] and [3, 4]
    assert cache.protected_size == 4 and cache.evictable_size == 2
    assert cache.evict(100) == 2  # only [5, 6]
    assert cache.match_prefix([1, 2, 3, 4]).slot_indices.tolist() == [1, 2, 3, 4]
    cache.check_integrity()
    assert cache.dec_lock_ref(m.last_node) == 4
    assert cache.evictable_size == 4 and cache.protected_size == 0
    assert cache.evict(100) == 4
    assert cache.total_size == 0 and cache.pool.available_size() == 64
    cache.check_integrity()


def test_split_of_a_locked_node_keeps_locks_and_the_callers_node():
    cache = make_cache()
    put(cache, [1, 2, 3, 4])
    m = cache.match_prefix([1, 2, 3, 4])
    cache.inc_lock_ref(m.last_node)
    put(cache, [1, 2, 8])  # splits the locked edge
    assert list(m.last_node.key) == [3, 4] and m.last_node.lock_ref == 1
    assert m.last_node.parent.lock_ref == 1
    cache.check_integrity()
    cache.dec_lock_ref(m.last_node)
    cache.check_integrity()
    with pytest.raises(RuntimeError):
        cache.dec_lock_ref(m.last_node)


def test_nested_locks_count():
    cache = make_cache()
    put(cache, [1, 2, 3, 4])
    short = cache.match_prefix([1, 2]).last_node
    long = cache.match_prefix([1, 2, 3, 4]).last_node
    assert cache.inc_lock_ref(long) == 4
    assert cache.inc_lock_ref(short) == 0  # already protected
    assert short.lock_ref == 2 and long.lock_ref == 1
    assert cache.dec_lock_ref(long) == 2  # [3, 4] free again; [1, 2] still locked by `short`
    assert cache.evict(10) == 2
    assert cache.dec_lock_ref(short) == 2
    cache.check_integrity()


def test_namespaces_never_share_nodes():
    cache = make_cache()
    a, _ = put(cache, [1, 2, 3], extra_key="tenant-a")
    b, n = put(cache, [1, 2, 3], extra_key="tenant-b")
    assert n == 0 and a == [1, 2, 3] and b == [4, 5, 6]
    assert cache.match_prefix([1, 2, 3]).prefix_len == 0  # the default namespace is empty
    assert cache.match_prefix([1, 2], "tenant-b").slot_indices.tolist() == [4, 5]
    assert cache.match_prefix([1, 2], "tenant-a").slot_indices.tolist() == [1, 2]
    assert len(cache.root.children) == 2
    cache.check_integrity()


def test_page_size_alignment():
    cache = make_cache(total=32, page_size=4)
    slots, n = put(cache, [1, 2, 3, 4, 5, 6])  # pages 1, 2; only the first page is cached
    assert slots == [4, 5, 6, 7, 8, 9] and n == 0
    assert edges(cache) == [([1, 2, 3, 4], [4, 5, 6, 7])]
    assert cache.pool.available_size() == 32 - 4
    assert cache.match_prefix([1, 2, 3]).prefix_len == 0  # shorter than a page: nothing
    assert cache.match_prefix([1, 2, 3, 4, 5, 6, 7]).slot_indices.tolist() == [4, 5, 6, 7]
    # A mismatch inside the second page truncates the match to the first page.
    put(cache, [1, 2, 3, 4, 5, 6, 7, 8])
    m = cache.match_prefix([1, 2, 3, 4, 5, 6, 0, 8])
    assert m.prefix_len == 4 and list(m.last_node.key) == [1, 2, 3, 4]
    cache.check_integrity()


def test_page_size_split_is_page_aligned():
    cache = make_cache(total=32, page_size=2)
    put(cache, [1, 2, 3, 4, 5, 6])
    put(cache, [1, 2, 3, 9, 9, 9])  # differs inside page 2: split after page 1
    assert [e[0] for e in edges(cache)] == [[1, 2], [3, 4, 5, 6], [3, 9, 9, 9]]
    cache.check_integrity()


def test_reset_frees_everything_but_refuses_while_locked():
    cache = make_cache()
    put(cache, [1, 2, 3])
    put(cache, [1, 4])
    node = cache.match_prefix([1, 4]).last_node
    cache.inc_lock_ref(node)
    with pytest.raises(RuntimeError):
        cache.reset()
    cache.dec_lock_ref(node)
    cache.reset()
    assert cache.total_size == 0 and cache.pool.available_size() == 64
    assert cache.tokens_queried == 0
    cache.check_integrity()


def test_integrity_catches_a_leak_and_a_double_count():
    cache = make_cache()
    put(cache, [1, 2, 3])
    leaked = cache.pool.alloc(2)
    with pytest.raises(IntegrityError):
        cache.check_integrity()
    cache.check_integrity(held_by_requests=2)
    cache.check_integrity(held_by_requests=[leaked])
    with pytest.raises(IntegrityError):  # a held slot that the tree also holds
        cache.check_integrity(held_by_requests=[torch.tensor([1, 4])])


def test_insert_length_mismatch_raises():
    cache = make_cache()
    with pytest.raises(ValueError):
        cache.insert([1, 2, 3], torch.tensor([1, 2]))


def test_chunk_cache_reuses_nothing_and_frees_on_insert():
    pool = KVPool(SHAPE, 16, debug=True)
    cache = ChunkCache(pool)
    m = cache.match_prefix([1, 2, 3])
    assert m.prefix_len == 0
    assert cache.inc_lock_ref(m.last_node) == 0
    slots = pool.alloc(3)
    cache.check_integrity(held_by_requests=slots)
    assert cache.insert([1, 2, 3], slots) == 0
    assert cache.dec_lock_ref(m.last_node) == 0
    assert pool.available_size() == 16
    assert cache.match_prefix([1, 2, 3]).prefix_len == 0
    assert cache.evict(10) == 0 and cache.total_size == 0
    assert cache.tokens_queried == 6 and cache.hit_rate == 0.0
    cache.check_integrity()


def test_chunk_cache_with_pages_leaves_the_tail_to_the_caller():
    pool = KVPool(SHAPE, 16, page_size=4, debug=True)
    cache = ChunkCache(pool)
    key = list(range(10, 16))  # 6 tokens: one full page + a partial page
    slots = pool.alloc(6)
    assert cache.insert(key, slots) == 0
    cache.check_integrity(held_by_requests=slots[4:])
    pool.free(slots[cache.page_aligned_len(6) :])
    cache.check_integrity()
