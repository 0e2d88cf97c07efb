"""The disk tier inside a real engine (tiny float32 model): spill, reload, exact answers."""

from __future__ import annotations

import random

import pytest
import torch

import radixlm
from radixlm.kvcache.pool import KVPool, PoolShape
from radixlm.kvcache.radix_cache import RadixCache
from radixlm.kvcache.tiers import DiskTier, TierBridge

GREEDY = {"max_new_tokens": 8, "temperature": 0.0, "ignore_eos": True}


def prompt(seed: int, n: int = 150) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 380) for _ in range(n)]


def make_engine(model_dir, cache_dir=None, **options):
    options.setdefault("dtype", "float32")  # the exact mode: answers compare bitwise
    options.setdefault("debug", True)
    if cache_dir is not None:
        options["cache_dir"] = str(cache_dir)
    return radixlm.Engine(model=str(model_dir), **options)


def bridge_of(eng) -> TierBridge:
    bridge = eng.scheduler.kv.cache.tier
    assert isinstance(bridge, TierBridge)
    return bridge


def run(eng, ids, **kw):
    out = eng.generate(input_ids=ids, sampling_params=GREEDY, **kw)
    eng.check_integrity()
    return out["output_ids"], out["meta_info"]["cached_tokens"]


@pytest.fixture(scope="module")
def model_dir(tiny_model_factory):
    return tiny_model_factory("llama")


@pytest.fixture(scope="module")
def reference(model_dir):
    """Greedy tokens of each prompt with prefix caching off."""
    eng = make_engine(model_dir, disable_radix_cache=True)
    try:
        yield {s: run(eng, prompt(s))[0] for s in range(4)}
    finally:
        eng.shutdown()


def test_an_evicted_prefix_comes_back_from_disk_with_the_same_tokens(
    model_dir, reference, tmp_path
):
    # 400 slots: each 158-token request evicts the one before it from memory.
    eng = make_engine(model_dir, tmp_path, max_total_tokens=400)
    try:
        bridge = bridge_of(eng)
        for s in range(3):
            assert run(eng, prompt(s)) == (reference[s], 0)
        tree = eng.scheduler.kv.cache
        assert tree.match_prefix(prompt(0), record=False).prefix_len == 0  # gone from memory
        tokens, cached = run(eng, prompt(0))
        assert tokens == reference[0]
        assert cached == 149  # all but the last prompt token (which must be computed)
        assert bridge.tier.stats.tokens_loaded >= 149
    finally:
        eng.shutdown()
        bridge.tier.close()


def test_a_second_engine_on_the_directory_hits_and_another_salt_does_not(
    model_dir, reference, tmp_path
):
    first = make_engine(model_dir, tmp_path)
    try:
        assert run(first, prompt(1), cache_salt="a") == (reference[1], 0)
        assert bridge_of(first).tier.wait_idle(30)
    finally:
        first.shutdown()
        bridge_of(first).tier.close()
    second = make_engine(model_dir, tmp_path)
    try:
        assert run(second, prompt(1), cache_salt="b") == (reference[1], 0)
        assert run(second, prompt(1), cache_salt="a") == (reference[1], 149)
        assert run(second, prompt(1)[:100] + prompt(2)[:50], cache_salt="a")[1] == 100
    finally:
        second.shutdown()
        bridge_of(second).tier.close()


def test_flush_cache_empties_the_disk_tier_too(model_dir, reference, tmp_path):
    eng = make_engine(model_dir, tmp_path)
    try:
        run(eng, prompt(3))
        tier = bridge_of(eng).tier
        assert tier.wait_idle(30) and list((tmp_path / "entries").glob("*.kv"))
        assert eng.flush_cache()
        assert tier.wait_idle(30)
        assert not list((tmp_path / "entries").glob("*.kv"))
        assert run(eng, prompt(3)) == (reference[3], 0)
    finally:
        eng.shutdown()
        bridge_of(eng).tier.close()


def test_the_tree_spills_and_reloads_exact_kv_and_stays_consistent(tmp_path):
    """The bridge alone, over a real pool: K/V bits survive evict -> disk -> reload."""
    pool = KVPool(PoolShape(2, 2, 4, torch.float32), 64, debug=True)
    cache = RadixCache(pool)
    tier = DiskTier.open(tmp_path, "fp", 1 << 30, block_tokens=8)
    assert tier is not None
    cache.tier = TierBridge(cache, tier)
    key = list(range(100, 140))  # 40 tokens
    slots = pool.alloc(40)
    torch.manual_seed(0)
    pool.k_buffer[:, slots] = torch.randn(2, 40, 2, 4)
    pool.v_buffer[:, slots] = torch.randn(2, 40, 2, 4)
    want_k, want_v = pool.k_buffer[:, slots].clone(), pool.v_buffer[:, slots].clone()
    assert cache.insert(key, slots) == 0
    cache.insert(key[:20] + [7] * 4, torch.cat([slots[:20], pool.alloc(4)]))  # a branch at 20
    assert cache.evict(64) == 44 and pool.available_size() == 64
    cache.check_integrity()
    m = cache.match_prefix(key, record=False)
    assert m.prefix_len == 0
    m = cache.tier.load_deeper(key, None, m)
    assert m.prefix_len == 40
    assert torch.equal(pool.k_buffer[:, m.slot_indices], want_k)
    assert torch.equal(pool.v_buffer[:, m.slot_indices], want_v)
    cache.check_integrity()
    tier.close()
