"""What the live cache view shows beside the tree: recent evictions and per-namespace usage.

Both are bounded, O(1) per event, and written on the engine loop thread only:
- `EvictionLog` keeps the last `EVICTIONS_KEPT` evicted edges (the radix cache calls
  `record` for each node it frees);
- `CacheUsage` counts, per cache namespace (`extra_key`, e.g. a tenant's salt), the
  requests admitted, their prompt tokens and the tokens served from the cache; it also
  counts a hit on every tree node a request reused, and keeps a few (logical clock,
  wall time) pairs so a node's `last_access` tick can be read as seconds ago.

Namespaces are never shown as themselves: `namespace_label` gives a short hash, so a
salt (a tenant's secret) never leaves the engine.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import NamedTuple

from radixlm.kvcache.prefix_cache import TreeNode

EVICTIONS_KEPT = 64  # recent evictions remembered
LABEL_TOKENS = 24  # leading token ids kept per edge, to be decoded as its label
MAX_NAMESPACES = 256  # namespaces counted one by one; the rest share OTHER_NAMESPACE
OTHER_NAMESPACE = "other namespaces"
CLOCK_SAMPLES = 4096  # (clock, time) pairs kept to turn access ticks into seconds


@functools.lru_cache(maxsize=MAX_NAMESPACES)
def namespace_label(extra_key: Hashable | None) -> str:
    """A stable, non-reversible label of a cache namespace: "default" for none, else
    "salt:" + the first 12 hex digits of SHA-256 of the key (the salt itself is never shown)."""
    if extra_key is None:
        return "default"
    digest = hashlib.sha256(str(extra_key).encode("utf-8", "surrogatepass")).hexdigest()
    return f"salt:{digest[:12]}"


class Eviction(NamedTuple):  # a tuple: one is made per evicted node, often in a hot loop
    """One evicted edge: when (`time.time()`), its namespace label, its length, its first
    token ids (for a label), and the hits it had served."""

    time: float
    namespace: str
    tokens: int
    label_ids: tuple[int, ...]
    hits: int


class EvictionLog:
    """The last `EVICTIONS_KEPT` evictions, oldest first, and how many there were in all."""

    def __init__(self, keep: int = EVICTIONS_KEPT) -> None:
        self.recent: deque[Eviction] = deque(maxlen=keep)
        self.total_nodes = 0
        self.total_tokens = 0

    def record(self, node: TreeNode) -> None:
        """`node` was just evicted (its key is still readable)."""
        n = len(node.key)
        self.total_nodes += 1
        self.total_tokens += n
        self.recent.append(Eviction(time.time(), namespace_label(node.extra_key), n,
                                    node.key[:LABEL_TOKENS], node.hits))  # fmt: skip


@dataclass
class NamespaceUsage:
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0


class CacheUsage:
    """Per-namespace request counters, node hit counts and the clock-to-time map."""

    def __init__(self) -> None:
        self.namespaces: dict[str, NamespaceUsage] = {}
        self._clock: deque[int] = deque(maxlen=CLOCK_SAMPLES)
        self._time: deque[float] = deque(maxlen=CLOCK_SAMPLES)

    def admitted(
        self, extra_key: Hashable | None, last_node: TreeNode | None, prompt: int, cached: int,
        clock: int,
    ) -> None:
        """A request was admitted for the first time, reusing the path ending at `last_node`
        (`cached` tokens of its `prompt`); `clock` is the cache's logical clock now."""
        label = namespace_label(extra_key)
        if label not in self.namespaces and len(self.namespaces) >= MAX_NAMESPACES:
            label = OTHER_NAMESPACE
        usage = self.namespaces.setdefault(label, NamespaceUsage())
        usage.requests += 1
        usage.prompt_tokens += prompt
        usage.cached_tokens += cached
        node = last_node
        while node is not None and node.parent is not None:  # every reused node, not the root
            node.hits += 1
            node = node.parent
        if not self._clock or clock > self._clock[-1]:
            self._clock.append(clock)
            self._time.append(time.time())

    def time_of(self, tick: int) -> float | None:
        """The wall time of the last admission at or before logical tick `tick` (an upper
        bound on how long ago a node with `last_access == tick` was used); None when the
        tick is older than the samples kept."""
        i = bisect.bisect_right(self._clock, tick)
        return self._time[i - 1] if i else None
