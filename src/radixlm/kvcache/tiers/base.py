"""The interface of a cache tier below the KV pool.

A tier keeps the K/V of token paths the pool no longer holds (or may soon
drop), keyed by namespace (tenant salt) and token path, under one model
fingerprint. The radix tree talks to a tier only through `TierBridge`
(`bridge.py`): it asks `save` to keep a node's tokens (the K/V gathered out
of the pool before its slots can be reused) and, when a match stops short,
asks `lookup` how much deeper the tier goes and `read` for that K/V.

`DiskTier` (`disk.py`) is the persistent implementation. A host-memory tier
under a GPU pool is a second one: the same `BlockIndex` (`index.py`) with
each entry's payload a pinned host tensor instead of a file, and `read`
returning it without a file read; the bridge and the scheduler stay as they are.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from radixlm.kvcache.tiers.index import Hit

# gather(lo, hi) -> K/V of key tokens [lo, hi) as [2, num_layers, hi - lo, num_kv_heads, head_dim]
Gather = Callable[[int, int], torch.Tensor]


@dataclass
class TierStats:
    """Counters a tier keeps, since it was opened."""

    tokens_saved: int = 0  # tokens queued for storing
    tokens_loaded: int = 0  # tokens read back into the pool
    load_seconds: float = 0.0  # time spent in `read`
    dropped: int = 0  # saves refused (queue full) or entries that failed to store
    bad_entries: int = 0  # entries found truncated or corrupted, skipped
    deleted: int = 0  # entries deleted to stay under the size cap


class CacheTier(ABC):
    """A store of K/V blocks below the pool; see the module docstring."""

    block_tokens: int
    stats: TierStats

    @abstractmethod
    def lookup(self, key: Sequence[int], extra_key: Hashable | None, start: int) -> Hit:
        """How far beyond `key[:start]` (already cached above) this tier continues `key`.

        Cheap (no K/V is read). The hit is a plan for `read`; it may be empty.
        """

    @abstractmethod
    def read(self, hit: Hit) -> torch.Tensor:
        """K/V for tokens `[hit.start, hit.start + m)` of the looked-up key, m <= hit.length.

        Shape [2, num_layers, m, num_kv_heads, head_dim], on the CPU. m is less
        than asked when an entry turns out to be gone or damaged (it is
        dropped, with a log line); what is returned was verified.
        """

    @abstractmethod
    def save(
        self, key: Sequence[int], extra_key: Hashable | None, start: int, end: int, gather: Gather
    ) -> int:
        """Keep tokens `[start, end)` of `key`; `gather` copies K/V out of the pool.

        Blocks the tier holds already are skipped; `gather` is called before
        returning (so the pool's slots may be reused right after), any slow
        work happens later. Returns the tokens newly queued for storing.
        """

    @abstractmethod
    def clear(self) -> None:
        """Drop everything this tier holds for this fingerprint."""

    @abstractmethod
    def close(self) -> None:
        """Finish pending work; the tier is unusable afterwards."""
