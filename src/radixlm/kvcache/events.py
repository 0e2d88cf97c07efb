"""KV cache events in vLLM's format: what the radix tree stores and drops, block by block.

A router that knows exactly which blocks each worker holds (vllm-router's `kv_aware`
policy, llm-d, Dynamo) subscribes to these events instead of guessing from the text it
routed. The wire format is vLLM's:

- ZeroMQ PUB socket; each message is three frames `[topic, seq, payload]`, `seq` an
  8-byte big-endian counter (one per batch, from 0), `payload` one msgpack batch.
- A batch is the positional array `[ts, [event, ...], data_parallel_rank]`.
- An event is a map tagged by `type`: `{"type": "BlockStored", "block_hashes",
  "parent_block_hash", "token_ids", "block_size", "lora_id", "medium", "lora_name",
  "extra_keys"}`, `{"type": "BlockRemoved", "block_hashes", "medium"}`,
  `{"type": "AllBlocksCleared"}` -- what vllm-router 0.1.17 decodes. With
  `encoding: "array"` each is instead the positional list after its tag,
  `["BlockStored", block_hashes, ...]` (msgspec's `array_like` + `tag`, the layout of
  vLLM's example subscriber).

Blocks: the tree's token paths are cut into `block_size`-token blocks at absolute
positions 0, B, 2B, ...; block k of a path is cached when the path is cached up to
position (k + 1) * B. Only whole blocks are published (a router matches whole blocks).
A block's hash chains its parent's: `sha256(parent digest + salt + token ids)`, the
salt (the request's `cache_salt`, the tree's namespace) entering at block 0 only, so
the same tokens under two salts are two different blocks. The published hash is the
digest's last 8 bytes as an unsigned integer (vLLM's integer block hashes). The salt
also rides in `extra_keys` of the chain's first block, as vLLM sends `cache_salt`.

`BlockTracker` turns the tree's leaf additions and removals (the hooks in
`radix_cache`) into events; `ZmqEventPublisher` batches and sends them from its own
thread; `BlockSetReplay` is a consumer that rebuilds the block set from the events.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any

from radixlm.config import KVEventsConfig

if TYPE_CHECKING:
    from radixlm.kvcache.prefix_cache import TreeNode

log = logging.getLogger(__name__)

MEDIUM = "GPU"  # vLLM's label for the device tier; routers treat it as the worker's own cache
_END_SEQ = -1  # a replay stream ends with this sequence number

# An event on the wire: a list whose first element is its type name.
Event = list[Any]


def _digest(parent: bytes, salt: Hashable | None, tokens: Iterable[int]) -> bytes:
    """sha256 over the parent digest, the salt (block 0 only) and the token ids (u32 LE)."""
    h = hashlib.sha256(parent)
    if salt is not None:
        text = str(salt).encode()
        h.update(b"salt" + struct.pack("<I", len(text)) + text)
    toks = list(tokens)
    h.update(struct.pack(f"<{len(toks)}I", *toks))
    return h.digest()


def external_hash(digest: bytes) -> int:
    """The published block hash: the digest's last 8 bytes, big-endian, unsigned."""
    return int.from_bytes(digest[-8:], "big")


def chain_hashes(tokens: tuple[int, ...], salt: Hashable | None, block_size: int) -> list[int]:
    """Hashes of every whole block of the path `tokens` in namespace `salt`, in order."""
    out, parent = [], b""
    for k in range(len(tokens) // block_size):
        block = tokens[k * block_size : (k + 1) * block_size]
        parent = _digest(parent, salt if k == 0 else None, block)
        out.append(external_hash(parent))
    return out


def path_of(node: TreeNode) -> tuple[int, ...]:
    """The token ids from the root to the end of `node`'s edge (walks up the parents)."""
    keys = []
    while node.parent is not None:
        keys.append(node.key)
        node = node.parent
    return tuple(t for key in reversed(keys) for t in key)


def block_stored(hashes: list[int], parent: int | None, tokens: list[int], block_size: int,
                 salt: Hashable | None) -> Event:  # fmt: skip
    """A `BlockStored` event; `extra_keys` carries the salt on a chain that starts at block 0."""
    extra = [[str(salt)] if salt is not None and parent is None and i == 0 else None
             for i in range(len(hashes))]  # fmt: skip
    return ["BlockStored", hashes, parent, tokens, block_size, None, MEDIUM, None, extra]


class BlockTracker:
    """The radix tree's listener: leaf added -> BlockStored, leaf removed -> BlockRemoved,
    tree reset -> AllBlocksCleared. Each event goes to `sink` at once.

    The tree calls `stored(leaf)` after linking a new leaf, `removed(leaf)` when it
    unlinks one (its `parent` still set), `cleared()` after a reset. A leaf covering
    path positions [s, e) adds (or drops) the blocks whose last token lies in it: block
    k with s < (k + 1) * B <= e. Splitting an edge changes no block, so it is silent.
    """

    def __init__(self, block_size: int, sink: Callable[[Event], None]) -> None:
        self.block_size = block_size
        self.sink = sink

    def _blocks(self, leaf: TreeNode) -> tuple[tuple[int, ...], list[int], int]:
        """The leaf's path, its whole-block hashes, and the index of the leaf's first block."""
        path = path_of(leaf)
        start = len(path) - len(leaf.key)
        first = start // self.block_size  # blocks ending at or before `start` are the parent's
        return path, chain_hashes(path, leaf.extra_key, self.block_size), first

    def stored(self, leaf: TreeNode) -> None:
        path, hashes, first = self._blocks(leaf)
        if len(hashes) > first:
            b = self.block_size
            parent = hashes[first - 1] if first else None
            self.sink(block_stored(hashes[first:], parent, list(path[first * b:len(hashes) * b]),
                                   b, leaf.extra_key))  # fmt: skip

    def removed(self, leaf: TreeNode) -> None:
        _, hashes, first = self._blocks(leaf)
        if len(hashes) > first:
            self.sink(["BlockRemoved", hashes[first:], MEDIUM])

    def cleared(self) -> None:
        self.sink(["AllBlocksCleared"])


# Field names of each event type after the tag, in wire order.
FIELDS = {
    "BlockStored": ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id",
                    "medium", "lora_name", "extra_keys"),
    "BlockRemoved": ("block_hashes", "medium"),
    "AllBlocksCleared": (),
}  # fmt: skip


def _on_wire(event: Event, encoding: str) -> Any:
    """`event` as sent: a map with a `type` key ("map"), or the positional list ("array")."""
    if encoding == "array":
        return event
    return {"type": event[0], **dict(zip(FIELDS[event[0]], event[1:], strict=True))}


def _from_wire(obj: Any) -> Event:
    if isinstance(obj, dict):
        kind = obj["type"]
        return [kind, *(obj.get(name) for name in FIELDS[kind])]
    return list(obj)


def encode_batch(events: list[Event], ts: float | None = None, dp_rank: int | None = None,
                 encoding: str = "map") -> bytes:  # fmt: skip
    """One msgpack batch `[ts, events, data_parallel_rank]`, events encoded as `encoding`."""
    import msgpack

    wire = [_on_wire(e, encoding) for e in events]
    return msgpack.packb([time.time() if ts is None else ts, wire, dp_rank])


def decode_batch(payload: bytes) -> tuple[float, list[Event], int | None]:
    """`(ts, events, data_parallel_rank)` of one msgpack batch (either event encoding)."""
    import msgpack

    arr = msgpack.unpackb(payload)
    return arr[0], [_from_wire(e) for e in arr[1]], arr[2] if len(arr) > 2 else None


class ZmqEventPublisher:
    """Sends tracked events from its own thread, one batch per wake-up, in order.

    `put(event)` is safe from any thread and never blocks (past `max_queue_size`
    pending events, new ones are dropped and counted in `dropped`). With a replay
    endpoint, the last `buffer_steps` batches are kept for a subscriber that missed
    some: it sends the first `seq` it wants (8 bytes, big-endian) and gets each kept
    batch from there as `[topic, seq, payload]`, then `seq = -1`.
    """

    def __init__(self, cfg: KVEventsConfig, dp_rank: int | None = None) -> None:
        import zmq

        self.cfg, self.dp_rank = cfg, dp_rank
        self._queue: queue.Queue[Event | None] = queue.Queue(cfg.max_queue_size)
        self._ctx = zmq.Context()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, cfg.hwm)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.bind(cfg.endpoint)
        self._replay = None
        if cfg.replay_endpoint:
            self._replay = self._ctx.socket(zmq.ROUTER)
            self._replay.setsockopt(zmq.LINGER, 0)
            self._replay.bind(cfg.replay_endpoint)
        self._kept: deque[tuple[int, bytes]] = deque(maxlen=cfg.buffer_steps)
        self.seq = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="radixlm-kv-events", daemon=True)
        self._thread.start()

    def put(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued, stop the thread, close the sockets."""
        self._queue.put(None)
        self._thread.join(timeout)
        self._ctx.destroy(linger=0)

    def _run(self) -> None:
        topic = self.cfg.topic.encode()
        while True:
            try:
                first = self._queue.get(timeout=0.05)
            except queue.Empty:
                self._serve_replay(topic)
                continue
            events, stop = ([] if first is None else [first]), first is None
            while not stop:
                try:
                    ev = self._queue.get_nowait()
                except queue.Empty:
                    break
                stop = ev is None
                if ev is not None:
                    events.append(ev)
            if events:
                payload = encode_batch(events, dp_rank=self.dp_rank, encoding=self.cfg.encoding)
                self._pub.send_multipart([topic, self.seq.to_bytes(8, "big"), payload])
                self._kept.append((self.seq, payload))
                self.seq += 1
            self._serve_replay(topic)
            if stop:
                return

    def _serve_replay(self, topic: bytes) -> None:
        import zmq

        while self._replay is not None and self._replay.poll(0):
            frames = self._replay.recv_multipart()
            ident, start = frames[0], int.from_bytes(frames[-1], "big", signed=True)
            for seq, payload in list(self._kept):
                if seq >= start:
                    self._replay.send_multipart([ident, b"", topic, seq.to_bytes(8, "big"),
                                                 payload], zmq.DONTWAIT)  # fmt: skip
            end = _END_SEQ.to_bytes(8, "big", signed=True)
            self._replay.send_multipart([ident, b"", topic, end, b""], zmq.DONTWAIT)


class BlockSetReplay:
    """A consumer's view rebuilt from events: block hash -> its tokens and parent.

    `apply` raises ValueError for an event that contradicts the view (a block stored
    twice, a removal of an unknown block, a stored chain under an unknown parent).
    """

    def __init__(self) -> None:
        self.blocks: dict[int, tuple[int | None, tuple[int, ...]]] = {}

    def apply(self, event: Event) -> None:
        kind = event[0]
        if kind == "AllBlocksCleared":
            self.blocks.clear()
        elif kind == "BlockStored":
            hashes, parent, tokens, bs = event[1], event[2], event[3], event[4]
            if parent is not None and parent not in self.blocks:
                raise ValueError(f"BlockStored under unknown parent {parent}")
            for i, h in enumerate(hashes):
                if h in self.blocks:
                    raise ValueError(f"block {h} stored twice")
                self.blocks[h] = (parent, tuple(tokens[i * bs:(i + 1) * bs]))
                parent = h
        elif kind == "BlockRemoved":
            for h in event[1]:
                if self.blocks.pop(h, None) is None:
                    raise ValueError(f"BlockRemoved of unknown block {h}")
        else:
            raise ValueError(f"unknown event type {kind!r}")

    def apply_batch(self, payload: bytes) -> None:
        for event in decode_batch(payload)[1]:
            self.apply(event)


def tree_block_hashes(root: TreeNode, block_size: int) -> set[int]:
    """Every whole block the tree under `root` caches, as published hashes (for checks)."""
    out: set[int] = set()
    stack = list(root.children.values())
    while stack:
        node = stack.pop()
        if not node.children:  # a leaf's path covers every block of the nodes above it
            out.update(chain_hashes(path_of(node), node.extra_key, block_size))
        stack.extend(node.children.values())
    return out


def make_publisher(cfg: KVEventsConfig, dp_rank: int | None = None) -> tuple[
        BlockTracker, ZmqEventPublisher | None]:  # fmt: skip
    """The tracker to attach to a radix cache, and the publisher it feeds (None for the
    "null" publisher, whose tracker drops every event)."""
    if cfg.publisher == "null":
        return BlockTracker(cfg.block_size, lambda _e: None), None
    pub = ZmqEventPublisher(cfg, dp_rank)
    return BlockTracker(cfg.block_size, pub.put), pub


def attach(cache: Any, config_json: str | None, dp_rank: int | None = None) -> None:
    """Publish `cache`'s events as `config_json` (a `KVEventsConfig` as JSON) asks.

    Does nothing when `config_json` is None or does not enable events, or when `cache`
    is not a radix cache (with reuse disabled nothing is ever cached).
    """
    from radixlm.kvcache.radix_cache import RadixCache

    if config_json is None or not isinstance(cache, RadixCache):
        return
    cfg = KVEventsConfig.from_json(config_json)
    if cfg.enable_kv_cache_events:
        cache.events = make_publisher(cfg, dp_rank)[0]
        log.info("KV events: %s publisher on %s, %d-token blocks", cfg.publisher,
                 cfg.endpoint, cfg.block_size)  # fmt: skip
