"""The disabled prefix cache: the same interface as `RadixCache`, with no reuse.

Use it to run the engine with prefix caching off (for comparisons): nothing
is ever cached, so every request computes its whole prompt. The caller
follows exactly the protocol of `prefix_cache`; here that means:

- `match_prefix` returns no slots and the dummy root as `last_node`
  (locking it is a no-op), and counts the queried tokens as misses;
- `insert(key, slots)` frees `slots[:page_aligned_len(len(key))]` to the pool
  at once and returns 0, so the caller frees only `slots[aligned:]` (nothing
  when page_size is 1) — the same code path as with the radix cache.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from radixlm.kvcache import integrity
from radixlm.kvcache.pool import KVPool
from radixlm.kvcache.prefix_cache import (
    HeldSlots,
    Insertion,
    MatchResult,
    PrefixCache,
    TokenKey,
    TreeNode,
)


class ChunkCache(PrefixCache):
    """A prefix cache that caches nothing; insert hands the slots straight back to the pool."""

    shares_prefixes = False

    def __init__(self, pool: KVPool) -> None:
        self.pool = pool
        self.page_size = pool.page_size
        self._empty = torch.empty(0, dtype=torch.int64, device=pool.device)
        self.root = TreeNode(None, (), self._empty)
        self.tokens_queried = 0
        self.tokens_hit = 0

    @property
    def evictable_size(self) -> int:
        return 0

    @property
    def protected_size(self) -> int:
        return 0

    def match_prefix(
        self, key: TokenKey, extra_key: Hashable | None = None, *, record: bool = True
    ) -> MatchResult:
        """No prefix: empty slot indices and the dummy root node (safe to lock and unlock)."""
        if record:
            self.tokens_queried += len(key)
        return MatchResult((self._empty,), self.root, 0)

    def insert(
        self, key: TokenKey, slot_indices: torch.Tensor, extra_key: Hashable | None = None
    ) -> int:
        """Free `slot_indices[:page_aligned_len(len(key))]` to the pool; return 0."""
        if slot_indices.numel() != len(key):
            raise ValueError(f"{len(key)} tokens but {slot_indices.numel()} slot indices")
        self.pool.free(slot_indices[: self.page_aligned_len(len(key))])
        return 0

    def insert_below(
        self, node: TreeNode, key: TokenKey, slot_indices: torch.Tensor,
        extra_key: Hashable | None = None,
    ) -> Insertion:
        """`insert` (`node` is the root: nothing is ever matched); nothing was cached."""
        self.insert(key, slot_indices, extra_key)
        return Insertion(self._empty, self.root)

    def inc_lock_ref(self, node: TreeNode) -> int:
        """No-op (nothing is cached); returns 0."""
        return 0

    def dec_lock_ref(self, node: TreeNode) -> int:
        """No-op (nothing is cached); returns 0."""
        return 0

    def evict(self, num_tokens: int) -> int:
        """Nothing to evict; returns 0."""
        return 0

    def reset(self) -> None:
        """Restart the counters (there is nothing cached)."""
        self.tokens_queried = 0
        self.tokens_hit = 0

    def check_integrity(self, held_by_requests: HeldSlots = 0) -> None:
        """Raise IntegrityError unless pool free + held by requests == pool total."""
        integrity.check_slot_accounting(self.pool, self._empty, held_by_requests)
