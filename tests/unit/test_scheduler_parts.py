"""Scheduler parts without a model: policy order, admission budget, in-batch prefix sharing."""

from __future__ import annotations

import torch

from radixlm.config import SchedulerConfig
from radixlm.kvcache.chunk_cache import ChunkCache
from radixlm.kvcache.pool import KVPool, PoolShape
from radixlm.kvcache.radix_cache import RadixCache
from radixlm.sampling.params import SamplingParams
from radixlm.scheduler.kv_manager import KVManager
from radixlm.scheduler.policy import SchedulePolicy
from radixlm.scheduler.prefill_adder import PrefillAdder
from radixlm.scheduler.request import Req

SHAPE = PoolShape(num_layers=1, num_kv_heads=1, head_dim=2, dtype=torch.float32)


def kv_manager(total: int = 200, reuse: bool = True) -> KVManager:
    pool = KVPool(SHAPE, total, debug=True)
    return KVManager(pool, RadixCache(pool) if reuse else ChunkCache(pool))


def req(rid: str, ids: list[int], max_new: int = 4) -> Req:
    return Req(rid=rid, input_ids=ids, params=SamplingParams(max_new_tokens=max_new))


def cache_sequence(kv: KVManager, ids: list[int]) -> None:
    """Put `ids` in the tree as a finished request would."""
    r = req("warm", ids)
    m = kv.match(r)
    assert kv.lock_and_allocate(r, m, len(ids) - m.prefix_len)
    kv.release(r)


def test_lpm_and_dfs_weight_orders():
    kv = kv_manager()
    cache_sequence(kv, [1, 2, 3, 4, 5, 6])  # branch A, deep
    cache_sequence(kv, [9, 8, 7])  # branch B
    waiting = [
        req("none", [50, 51, 52]),
        req("b", [9, 8, 7, 1]),
        req("a_short", [1, 2, 60]),
        req("a_deep", [1, 2, 3, 4, 5, 6, 70]),
        req("b2", [9, 8, 7, 2]),
    ]
    root = kv.cache.root  # type: ignore[attr-defined]
    lpm = SchedulePolicy("lpm", kv.match, root).order(waiting)
    assert [r.rid for r in lpm] == ["a_deep", "b", "b2", "a_short", "none"]
    dfs = SchedulePolicy("dfs-weight", kv.match, root).order(waiting)
    # Both branches weigh 2; a subtree's deeper matches come before its shallower ones,
    # and requests with no match (at the root) come last.
    assert dfs[-1].rid == "none"
    a_pos = [i for i, r in enumerate(dfs) if r.rid.startswith("a")]
    assert a_pos == sorted(a_pos) and a_pos[1] - a_pos[0] == 1
    assert [r.rid for r in dfs if r.rid.startswith("a")] == ["a_deep", "a_short"]
    fcfs = SchedulePolicy("fcfs", kv.match, root).order(waiting)
    assert fcfs == waiting
    # Past the fallback length a cache-aware policy keeps arrival order.
    assert (
        SchedulePolicy("lpm", kv.match, root, fcfs_fallback_queue_len=2).order(waiting) == waiting
    )


def test_siblings_sharing_an_uncached_prefix_are_held_back():
    kv = kv_manager()
    adder = PrefillAdder(SchedulerConfig(in_batch_prefix_threshold=4), kv)
    trunk = list(range(10, 30))
    waiting = [req("x", [*trunk, 1]), req("y", [*trunk, 2]), req("z", [77, 78, 79])]
    batch = adder.build(waiting, [], None, ratio=0.5)
    assert [r.rid for r in batch.reqs] == ["x", "z"]  # y waits for x's prefix
    # With reuse off there is nothing to wait for.
    kv_off = kv_manager(reuse=False)
    batch = PrefillAdder(SchedulerConfig(), kv_off).build(waiting, [], None, ratio=0.5)
    assert len(batch.reqs) == 3


def test_admission_respects_budget_and_chunks_long_prompts():
    kv = kv_manager(total=100)
    cfg = SchedulerConfig(chunked_prefill_size=16, max_prefill_tokens=64)
    adder = PrefillAdder(cfg, kv)
    long = req("long", list(range(3, 53)), max_new=10)  # 50 tokens: chunked
    batch = adder.build([long], [], None, ratio=1.0)
    assert batch.extend_lens == [16] and batch.chunked is long
    # The next step continues the chunk before admitting anyone else.
    other = req("o", [200, 201, 202], max_new=10)
    batch = adder.build([other], [], long, ratio=1.0)
    assert batch.reqs[0] is long and batch.extend_lens[0] == 16 and batch.chunked is long
    # A running request's reserved decode room blocks an admission that would overflow.
    running = req("run", [1], max_new=90)
    running.output_ids = []
    blocked = adder.build([req("p", list(range(300, 330)), max_new=5)], [running], None, 1.0)
    assert not blocked


def test_prefix_key_spans_prompt_and_output():
    r = req("a", [5, 6, 7])
    r.output_ids = [8, 9]
    fill = r.fill_ids
    for start in range(6):
        for n in range(start, 6):
            assert r.prefix_key(n, start) == tuple(fill[start:n]), (start, n)


def test_slot_pieces_join_and_split_at_the_protected_length():
    r = req("a", list(range(9)))
    r.set_slots([torch.tensor([10, 11, 12]), torch.tensor([13, 14])])
    r.append_slots(torch.tensor([15]))
    r.append_slots(torch.tensor([16, 17]))
    assert r.kv_len == 8 and r.kv_slots.tolist() == list(range(10, 18))
    for protected in range(9):
        pieces = [torch.tensor([10, 11, 12]), torch.tensor([13, 14]), torch.tensor([15, 16, 17])]
        r.set_slots(pieces)
        r.cache_protected_len = protected
        head, own = r.split_slots()
        assert [s for h in head for s in h.tolist()] == list(range(10, 10 + min(protected, 8)))
        assert own.tolist() == list(range(10 + protected, 18))
    r.set_slots(None)
    assert not r.has_kv and r.kv_len == 0 and r.kv_slots is None


def test_a_repeated_match_is_reused_only_while_the_tree_is_unchanged():
    kv = kv_manager(total=40)
    cache_sequence(kv, list(range(1, 21)))
    a, b = req("a", [*range(1, 11), 99]), req("b", [*range(1, 6), 98])
    first = kv.match(a)
    assert first.prefix_len == 10
    assert kv.match(a) is first  # nothing happened in between: the same result
    kv.match(b)  # another lookup stamps other nodes: `a` is looked up again
    again = kv.match(a)
    assert again is not first and again.prefix_len == 10
    assert kv.match(a) is again
    kv.cache.evict(40)  # everything unlocked goes: the old result would name freed slots
    assert kv.match(a).prefix_len == 0
    kv.cache.check_integrity()
