"""The cache view's tree snapshot: exact node and token counts, bounds, hits, evictions, salts."""

from __future__ import annotations

import json

import pytest
import torch

from radixlm.kvcache.activity import EVICTIONS_KEPT, CacheUsage, namespace_label
from radixlm.kvcache.chunk_cache import ChunkCache
from radixlm.kvcache.pool import KVPool, PoolShape
from radixlm.kvcache.radix_cache import RadixCache
from radixlm.kvcache.snapshot import SnapshotLimits, tree_snapshot

SHAPE = PoolShape(num_layers=1, num_kv_heads=1, head_dim=2, dtype=torch.float32)


def make_cache(total: int = 4096) -> RadixCache:
    return RadixCache(KVPool(SHAPE, total, page_size=1, debug=True))


def put(
    cache: RadixCache, key: list[int], extra_key=None, usage: CacheUsage | None = None,
    check: bool = True,
) -> None:
    """One request through the protocol (match, lock, alloc, insert, free, unlock); counts its
    admission in `usage` like the scheduler does; then the integrity check, with `check`."""
    m = cache.match_prefix(key, extra_key, record=False)
    cache.inc_lock_ref(m.last_node)
    if usage is not None:
        usage.admitted(extra_key, m.last_node, len(key), m.prefix_len, cache.clock)
    new = cache.pool.alloc(len(key) - m.prefix_len)
    assert new is not None
    slots = torch.cat([m.slot_indices, new])
    n = cache.insert(key, slots, extra_key)
    cache.pool.free(slots[m.prefix_len : n])
    cache.dec_lock_ref(m.last_node)
    if check:
        cache.check_integrity()


def real_nodes(snap: dict) -> list[dict]:
    return [n for n in snap["nodes"] if n["kind"] == "node"]


def test_shared_prefix_is_one_node_with_every_hit():
    cache, usage = make_cache(), CacheUsage()
    prefix = list(range(100, 150))
    for i in range(5):
        put(cache, [*prefix, 200 + i, 300 + i], usage=usage)
    snap = tree_snapshot(cache, usage)
    nodes = real_nodes(snap)
    assert snap["tree_nodes"] == 6 == len(nodes) == snap["drawn_nodes"]
    assert snap["tree_tokens"] == 50 + 5 * 2 == cache.total_size
    top = [n for n in nodes if n["parent"] == "t:default"]
    assert len(top) == 1 and top[0]["tokens"] == 50 and top[0]["size"] == 60
    assert top[0]["label_ids"] == prefix[:24]
    # The first request built the prefix; the split after the second made it a node; the
    # 2nd..5th reused it.
    assert top[0]["hits"] == 4
    assert all(n["hits"] == 0 for n in nodes if n is not top[0])
    assert snap["namespaces"] == [{"namespace": "default", "tree_tokens": 60, "tree_nodes": 6,
                                   "requests": 5, "prompt_tokens": 260,
                                   "cached_tokens": 200}]  # fmt: skip
    ages = [n["age_s"] for n in nodes]
    assert all(a is not None and 0 <= a < 60 for a in ages)
    json.dumps(snap)  # JSON-ready as it is


def test_bounded_snapshot_keeps_the_token_total():
    cache = make_cache()
    for i in range(300):  # 300 leaves under one 20-token prefix: 301 nodes
        put(cache, [*range(1, 21), 1000 + i, 2000 + i, 3000 + i])
    snap = tree_snapshot(cache, limits=SnapshotLimits(max_nodes=50, min_share=0.0))
    nodes = real_nodes(snap)
    merged = [n for n in snap["nodes"] if n["kind"] == "merged"]
    assert len(nodes) == 50 == snap["drawn_nodes"]
    assert snap["tree_nodes"] == 301 and snap["merged_nodes"] == 251
    assert len(merged) == 1 and merged[0]["merged"] == 251 and merged[0]["parent"] == nodes[0]["id"]
    drawn_tokens = sum(n["tokens"] for n in nodes) + merged[0]["tokens"]
    assert drawn_tokens == snap["tree_tokens"] == 20 + 300 * 3
    assert len(json.dumps(snap)) < 40_000


def test_small_children_merge_and_parents_come_first():
    cache = make_cache()
    put(cache, list(range(1, 401)))  # one big branch
    put(cache, [1, 2, 900])  # a tiny one: under 1% of the tree
    snap = tree_snapshot(cache, limits=SnapshotLimits(min_share=0.01))
    seen = set()
    for n in snap["nodes"]:
        assert n["parent"] is None or n["parent"] in seen
        seen.add(n["id"])
    assert [n["tokens"] for n in real_nodes(snap)] == [2, 398]
    (merged,) = [n for n in snap["nodes"] if n["kind"] == "merged"]
    assert merged["tokens"] == 1 and merged["merged"] == 1


def test_namespaces_are_hashed_never_shown():
    cache, usage = make_cache(), CacheUsage()
    put(cache, [1, 2, 3], extra_key="secret-salt-A", usage=usage)
    put(cache, [1, 2, 3], extra_key="\x00tenant-b\x00", usage=usage)
    put(cache, [1, 2, 3], usage=usage)
    text = json.dumps(tree_snapshot(cache, usage))
    assert "secret-salt-A" not in text and "tenant-b" not in text
    snap = json.loads(text)
    labels = {n["tenant"] for n in snap["nodes"] if n["kind"] == "tenant"}
    hashed = {namespace_label("secret-salt-A"), namespace_label("\x00tenant-b\x00")}
    assert labels == {"default", *hashed}
    assert len(labels) == 3 and all(lbl == "default" or len(lbl) == 17 for lbl in labels)
    assert all(r["tree_tokens"] == 3 and r["requests"] == 1 for r in snap["namespaces"])


def test_evictions_are_recorded_and_bounded():
    cache = make_cache(total=64)
    for i in range(EVICTIONS_KEPT + 40):  # each 32-token prompt pushes an older one out
        put(cache, [i, *range(5000, 5031)])
        assert cache.pool.available_size() + cache.evictable_size == 64
        cache.evict(max(0, 32 - cache.pool.available_size()))
    snap = tree_snapshot(cache)
    ev = snap["evictions"]
    assert ev["total_nodes"] == EVICTIONS_KEPT + 39  # all but the last prompt
    assert ev["total_tokens"] == 32 * ev["total_nodes"]
    assert len(ev["recent"]) == EVICTIONS_KEPT
    newest = ev["recent"][0]
    assert newest["tokens"] == 32 and newest["label_ids"][0] == EVICTIONS_KEPT + 38
    assert newest["namespace"] == "default" and newest["time"] >= ev["recent"][-1]["time"]
    cache.check_integrity()


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_nodes"):
        SnapshotLimits(max_nodes=0)
    with pytest.raises(ValueError, match="min_share"):
        SnapshotLimits(min_share=1.0)


def test_a_big_tree_gives_a_small_snapshot():
    cache = make_cache(total=40_000)
    for i in range(3000):  # 60 groups of 50 leaves: ~3,060 nodes
        put(cache, [i % 60, 7, 7, i, i + 1, i + 2, i + 3], check=False)
    cache.check_integrity()
    snap = tree_snapshot(cache)  # the default limits
    assert snap["tree_nodes"] > 3000 and snap["drawn_nodes"] <= SnapshotLimits().max_nodes
    drawn = [n for n in snap["nodes"] if n["kind"] in ("node", "merged")]
    assert sum(n["tokens"] for n in drawn) == snap["tree_tokens"] == cache.total_size
    assert snap["drawn_nodes"] + snap["merged_nodes"] == snap["tree_nodes"]
    assert len(json.dumps(snap)) < 120_000


def test_a_cache_that_shares_nothing_gives_an_empty_tree():
    cache = ChunkCache(KVPool(SHAPE, 64, page_size=1, debug=True))
    snap = tree_snapshot(cache, CacheUsage())
    assert snap["tree_nodes"] == snap["tree_tokens"] == 0 and snap["clock"] == 0
    assert [n["kind"] for n in snap["nodes"]] == ["root"] and snap["evictions"]["recent"] == []
