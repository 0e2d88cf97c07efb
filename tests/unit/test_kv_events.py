"""KV cache events: a consumer's replay of them equals the radix tree's block set.

Random traffic (shared prefixes, several salts, pool pressure, explicit evictions and
flushes) runs against a real `RadixCache` with a `BlockTracker` attached; the events
go through the msgpack wire encoding, and after every step the replayed block set
equals the blocks the tree caches. The ZeroMQ publisher is checked frame by frame,
and its payloads decode with vLLM's own msgspec definitions of the events.
"""

from __future__ import annotations

import random
import socket
import time

import msgspec
import pytest
import torch
import zmq

from radixlm.config import KVEventsConfig
from radixlm.kvcache.events import (
    BlockSetReplay,
    BlockTracker,
    ZmqEventPublisher,
    chain_hashes,
    decode_batch,
    encode_batch,
    tree_block_hashes,
)
from radixlm.kvcache.pool import KVPool, PoolShape
from radixlm.kvcache.radix_cache import RadixCache

SHAPE = PoolShape(num_layers=1, num_kv_heads=1, head_dim=1, dtype=torch.float32)
SALTS = [None, "tenant-a", "tenant-b"]


def _cache(slots: int, page_size: int, block_size: int) -> tuple[RadixCache, list[list]]:
    cache = RadixCache(KVPool(SHAPE, slots, page_size=page_size, debug=True))
    pending: list[list] = []
    cache.events = BlockTracker(block_size, pending.append)
    return cache, pending


def _serve(cache: RadixCache, key: list[int], salt: str | None) -> bool:
    """One request by the caller protocol: match, lock, allocate (evicting), insert, unlock.
    Returns False when the pool cannot hold it even after eviction."""
    m = cache.match_prefix(key, salt)
    cache.inc_lock_ref(m.last_node)
    need = len(key) - m.slot_indices.numel()
    own = cache.pool.alloc(need)
    if own is None:
        cache.evict(need)
        own = cache.pool.alloc(need)
    if own is None:
        cache.dec_lock_ref(m.last_node)
        return False
    slots = torch.cat([m.slot_indices, own])
    n = cache.insert(key, slots, salt)
    aligned = cache.page_aligned_len(len(key))
    cache.pool.free(torch.cat([slots[m.slot_indices.numel():n], slots[aligned:]]))
    cache.dec_lock_ref(m.last_node)
    return True


@pytest.mark.parametrize(("page_size", "block_size", "seed"),
                         [(1, 4, 0), (1, 5, 1), (2, 4, 2), (1, 1, 3)])  # fmt: skip
def test_replay_equals_tree_after_random_traffic(page_size: int, block_size: int, seed: int):
    rng = random.Random(seed)
    cache, pending = _cache(96, page_size, block_size)
    replay = BlockSetReplay()
    stems = [[rng.randrange(50) for _ in range(rng.randrange(3, 20))] for _ in range(6)]
    counts = {"stored": 0, "removed": 0, "cleared": 0}
    for step in range(400):
        r = rng.random()
        if r < 0.8:
            key = rng.choice(stems)[: rng.randrange(1, 20)] + [rng.randrange(50)
                                                               for _ in range(rng.randrange(8))]
            _serve(cache, key, rng.choice(SALTS))
        elif r < 0.95:
            cache.evict(rng.randrange(1, 30))
        else:
            cache.reset()
        # Send what this step produced as one batch through the wire encoding.
        batch, pending[:] = list(pending), []
        for ev in batch:
            counts[{"BlockStored": "stored", "BlockRemoved": "removed",
                    "AllBlocksCleared": "cleared"}[ev[0]]] += 1  # fmt: skip
        replay.apply_batch(encode_batch(batch, encoding="map" if step % 2 else "array"))
        assert set(replay.blocks) == tree_block_hashes(cache.root, block_size), f"step {step}"
        cache.check_integrity()
    assert all(counts.values()), counts  # the traffic exercised every kind of event


def test_replayed_blocks_carry_the_tokens_of_their_path():
    cache, pending = _cache(64, 1, 4)
    key = list(range(10, 23))  # 13 tokens: 3 whole blocks, 1 left over
    _serve(cache, key, None)
    replay = BlockSetReplay()
    for ev in pending:
        replay.apply(ev)
    hashes = chain_hashes(tuple(key), None, 4)
    assert len(hashes) == 3 and set(replay.blocks) == set(hashes)
    for k, h in enumerate(hashes):
        parent, toks = replay.blocks[h]
        assert toks == tuple(key[4 * k : 4 * k + 4])
        assert parent == (hashes[k - 1] if k else None)


def test_salts_make_different_blocks_and_evictions_name_them():
    cache, pending = _cache(64, 1, 4)
    key = list(range(8))
    _serve(cache, key, "a")
    _serve(cache, key, "b")
    stored = [ev for ev in pending if ev[0] == "BlockStored"]
    assert len(stored) == 2 and not set(stored[0][1]) & set(stored[1][1])
    assert stored[0][8][0] == ["a"] and stored[1][8][0] == ["b"]  # extra_keys: the salt
    pending.clear()
    cache.evict(64)
    removed = sorted(h for ev in pending if ev[0] == "BlockRemoved" for h in ev[1])
    assert removed == sorted(stored[0][1] + stored[1][1])


def test_a_request_inside_one_block_publishes_nothing():
    cache, pending = _cache(64, 1, 16)
    _serve(cache, list(range(15)), None)
    assert pending == []
    _serve(cache, list(range(17)), None)  # now block 0 is whole: it spans two nodes
    assert [ev[0] for ev in pending] == ["BlockStored"] and pending[0][3] == list(range(16))


def _vllm_types(array_like: bool) -> tuple[type, type, type]:
    """The events as a consumer's msgspec definitions read them (vLLM's field layout):
    positional lists (`array_like`) or maps tagged by `type`. Returns the batch type and
    the BlockStored and BlockRemoved types."""
    opts = {"array_like": True} if array_like else {"tag_field": "type"}
    stored = msgspec.defstruct("BlockStored", [
        ("block_hashes", list[int]), ("parent_block_hash", int | None),
        ("token_ids", list[int]), ("block_size", int), ("lora_id", int | None),
        ("medium", str | None), ("lora_name", str | None, None),
        ("extra_keys", list[list[object] | None] | None, None),
    ], tag=True, **opts)  # fmt: skip
    removed = msgspec.defstruct("BlockRemoved", [("block_hashes", list[int]),
                                                 ("medium", str | None)], tag=True, **opts)
    cleared = msgspec.defstruct("AllBlocksCleared", [], tag=True, **opts)
    batch = msgspec.defstruct("KVEventBatch", [
        ("ts", float), ("events", list[stored | removed | cleared]),
        ("data_parallel_rank", int | None, None),
    ], array_like=True)  # fmt: skip
    return batch, stored, removed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recv(sock: zmq.Socket, timeout_s: float = 10.0) -> list[bytes]:
    assert sock.poll(int(timeout_s * 1000)), "no message arrived"
    return sock.recv_multipart()


@pytest.mark.parametrize("encoding", ["map", "array"])
def test_publisher_frames_decode_with_vllm_definitions(encoding: str):
    batch_type, BlockStored, BlockRemoved = _vllm_types(array_like=encoding == "array")
    pub_port, replay_port = _free_port(), _free_port()
    cfg = KVEventsConfig(enable_kv_cache_events=True, endpoint=f"tcp://127.0.0.1:{pub_port}",
                         replay_endpoint=f"tcp://127.0.0.1:{replay_port}", topic="kv",
                         block_size=4, encoding=encoding)  # fmt: skip
    pub = ZmqEventPublisher(cfg, dp_rank=0)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"kv")
    sub.connect(f"tcp://127.0.0.1:{pub_port}")
    try:
        cache = RadixCache(KVPool(SHAPE, 64, page_size=1))
        cache.events = BlockTracker(4, pub.put)
        decoder = msgspec.msgpack.Decoder(type=batch_type)
        # PUB drops messages until the subscription reaches it: send until one arrives.
        deadline = time.monotonic() + 10
        while not sub.poll(100):
            assert time.monotonic() < deadline, "the subscriber never connected"
            cache.reset()
        while sub.poll(300):
            sub.recv_multipart()
        _serve(cache, list(range(9)), "s")
        topic, seq, payload = _recv(sub)
        assert topic == b"kv" and len(seq) == 8
        batch = decoder.decode(payload)
        assert batch.data_parallel_rank == 0 and batch.ts > 0
        (ev,) = batch.events
        assert isinstance(ev, BlockStored) and ev.block_size == 4 and ev.parent_block_hash is None
        assert ev.token_ids == list(range(8)) and ev.block_hashes == chain_hashes(
            tuple(range(9)), "s", 4)
        assert ev.extra_keys == [["s"], None]
        cache.evict(64)
        topic, seq2, payload = _recv(sub)
        assert int.from_bytes(seq2, "big") == int.from_bytes(seq, "big") + 1
        (ev2,) = decoder.decode(payload).events
        assert isinstance(ev2, BlockRemoved) and sorted(ev2.block_hashes) == sorted(ev.block_hashes)
        # Replay: ask from the stored batch's seq; get it and the removal, then seq -1.
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(f"tcp://127.0.0.1:{replay_port}")
        dealer.send_multipart([b"", seq])
        frames = [_recv(dealer) for _ in range(3)]
        assert [f[-3] for f in frames[:2]] == [b"kv", b"kv"]
        assert [int.from_bytes(f[-2], "big", signed=True) for f in frames] == [
            int.from_bytes(seq, "big"), int.from_bytes(seq2, "big"), -1]
        assert decoder.decode(frames[0][-1]).events == [ev]
    finally:
        pub.close()
        ctx.destroy(linger=0)


def test_engine_under_eviction_publishes_exactly_its_tree(tiny_model_factory):
    """A real engine (scheduler inserts, decode growth, evictions in a 256-token pool,
    salts, a flush): a subscriber's replay of its PUB socket equals its tree's blocks."""
    import json

    from radixlm import Engine

    port = _free_port()
    events = json.dumps({"enable_kv_cache_events": True, "endpoint": f"tcp://127.0.0.1:{port}",
                         "block_size": 8})  # fmt: skip
    engine = Engine(str(tiny_model_factory("llama")), dtype="float32", max_total_tokens=256,
                    kv_events_config=events)  # fmt: skip
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 10
        while not sub.poll(100):  # flush until the subscription is live (AllBlocksCleared)
            assert time.monotonic() < deadline, "the subscriber never connected"
            engine.flush_cache()
        replay, kinds = BlockSetReplay(), set()

        def drain() -> None:
            while sub.poll(300):
                for ev in decode_batch(sub.recv_multipart()[2])[1]:
                    kinds.add(ev[0])
                    replay.apply(ev)

        rng = random.Random(0)
        stems = [[rng.randrange(1, 200) for _ in range(40)] for _ in range(4)]
        for i in range(24):
            ids = rng.choice(stems)[: rng.randrange(8, 40)] + [rng.randrange(1, 200)
                                                              for _ in range(rng.randrange(12))]
            engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 6},
                            cache_salt=rng.choice(SALTS))  # fmt: skip
            if i == 12:
                drain()
                engine.flush_cache()
        drain()
        cache = engine.scheduler.kv.cache
        assert set(replay.blocks) == tree_block_hashes(cache.root, 8)
        assert {"BlockStored", "BlockRemoved", "AllBlocksCleared"} <= kinds
    finally:
        engine.shutdown()
        ctx.destroy(linger=0)
