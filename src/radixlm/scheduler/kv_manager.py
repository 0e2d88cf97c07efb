"""A request's KV life cycle over the pool and the prefix cache.

Match -> lock -> allocate the uncached rest -> compute -> insert what was
computed (after every prefill chunk, so later requests can reuse it even
while this one still runs) -> on finish, insert the rest, free duplicates and
unlock. Every slot is at all times either free in the pool, held by the tree,
or owned by exactly one running request (`Req` documents which of its slots
are which).
"""

from __future__ import annotations

import torch

from radixlm.kvcache.pool import KVPool
from radixlm.kvcache.prefix_cache import MatchResult, PrefixCache
from radixlm.scheduler.request import Req


class KVManager:
    def __init__(self, pool: KVPool, cache: PrefixCache) -> None:
        if pool.page_size != 1:
            raise ValueError("the scheduler runs with page_size 1")
        self.pool = pool
        self.cache = cache
        self.tier = getattr(cache, "tier", None)  # a lower cache tier (kvcache.tiers), or None

    # -- matching and admission ------------------------------------------------

    def match(self, req: Req) -> MatchResult:
        """The longest cached prefix `req` may reuse.

        The key stops at `req.max_prefix_len()`, so at least one token (and every
        position whose prompt logprobs are wanted) is computed. The result is valid
        until the next allocation or eviction unless `lock_and_allocate` locks it.
        With a lower cache tier, a prefix it continues is first loaded back into
        the pool (and the tree), so the match covers it.
        """
        key = req.fill_ids[: req.max_prefix_len()]
        m = self.cache.match_prefix(key, req.extra_key, record=False)
        if self.tier is not None and m.prefix_len < len(key):
            m = self.tier.load_deeper(key, req.extra_key, m)
        return m

    def available(self) -> int:
        """Slots an allocation could get now: free plus evictable."""
        return self.pool.available_size() + self.cache.evictable_size

    def alloc(self, n: int) -> torch.Tensor | None:
        """n fresh slots, evicting unlocked cached prefixes if needed; None if impossible."""
        if n == 0:
            return torch.empty(0, dtype=torch.int64, device=self.pool.device)
        short = n - self.pool.available_size()
        if short > 0:
            self.cache.evict(short)
        return self.pool.alloc(n)

    def lock_and_allocate(self, req: Req, m: MatchResult, extend_len: int) -> bool:
        """Start (or restart) a waiting request: lock its match `m`, allocate `extend_len` slots.

        Call right after `m = match(req)`, with no allocation in between (an
        allocation may evict what the match found). On success req.kv_slots =
        matched prefix slots + new slots; on failure nothing changes and False
        is returned.
        """
        self.cache.inc_lock_ref(m.last_node)
        new = self.alloc(extend_len)
        if new is None:
            self.cache.dec_lock_ref(m.last_node)
            return False
        req.kv_slots = torch.cat([m.slot_indices, new])
        req.cache_protected_len = m.prefix_len
        req.last_node = m.last_node
        return True

    def extend(self, req: Req, n: int) -> bool:
        """Append n fresh slots to a running request (next chunk or decode token)."""
        new = self.alloc(n)
        if new is None:
            return False
        assert req.kv_slots is not None
        req.kv_slots = torch.cat([req.kv_slots, new])
        return True

    def reserve_decode(self, reqs: list[Req], sizes: list[int]) -> bool:
        """Append `sizes[i]` fresh slots to running request i (its next token and draft);
        False, and nothing changed, when the pool cannot hold them all."""
        new = self.alloc(sum(sizes))
        if new is None:
            return False
        for req, slots in zip(reqs, new.split(sizes), strict=True):
            req.kv_slots = torch.cat([req.kv_slots, slots])  # type: ignore[list-item]
        return True

    def set_aside_drafts(self, req: Req, n: int) -> torch.Tensor:
        """Take the slots of `req`'s last `n` (draft) tokens out of its K/V; returns them.

        The caller gives each back with `keep_draft_slot` or frees it.
        """
        assert req.kv_slots is not None
        spare = req.kv_slots[req.kv_len - n :]
        req.kv_slots = req.kv_slots[: req.kv_len - n]
        return spare

    def keep_draft_slot(self, req: Req, slot: torch.Tensor) -> None:
        """A draft token was accepted: its slot ([1]) joins `req`'s K/V again."""
        assert req.kv_slots is not None
        req.kv_slots = torch.cat([req.kv_slots, slot])

    # -- caching and release ---------------------------------------------------

    def cache_unfinished(self, req: Req) -> None:
        """Insert the tokens computed so far into the tree; the request keeps running.

        Duplicate slots (K/V another request cached meanwhile) are freed and
        replaced by the tree's, and the lock moves down to the new last node.
        """
        if not self.cache.shares_prefixes or req.kv_slots is None:
            return  # a cache that shares nothing gets a request's slots when it ends
        key = req.fill_ids[: req.kv_len]
        n = self.cache.insert(key, req.kv_slots, req.extra_key)
        if n > req.cache_protected_len:
            self.pool.free(req.kv_slots[req.cache_protected_len : n])
        m = self.cache.match_prefix(key, req.extra_key, record=False)
        self.cache.inc_lock_ref(m.last_node)
        self.cache.dec_lock_ref(req.last_node)
        req.kv_slots = torch.cat([m.slot_indices, req.kv_slots[m.prefix_len :]])
        req.cache_protected_len, req.last_node = m.prefix_len, m.last_node

    def release(self, req: Req) -> None:
        """A request leaves the running set: cache its K/V, free what the tree did not take."""
        if req.kv_slots is None:
            return
        key = req.fill_ids[: req.kv_len]
        n = self.cache.insert(key, req.kv_slots, req.extra_key)  # it owns [n:] now
        if n > req.cache_protected_len:
            # The tree already held [protected, n): our copies are duplicates.
            self.pool.free(req.kv_slots[req.cache_protected_len : n])
        self.cache.dec_lock_ref(req.last_node)
        req.kv_slots, req.last_node, req.cache_protected_len = None, None, 0

    def discard(self, req: Req) -> None:
        """A request's step failed: free the slots it owns and unlock, caching nothing.

        Only `kv_slots[cache_protected_len:]` are freed: what the tree holds was
        computed by steps that succeeded, and the failed forward wrote only to
        the request's own new slots.
        """
        if req.kv_slots is None:
            return
        self.pool.free(req.kv_slots[req.cache_protected_len :])
        self.cache.dec_lock_ref(req.last_node)
        req.kv_slots, req.last_node, req.cache_protected_len = None, None, 0

    def owned_slots(self, reqs: list[Req]) -> list[torch.Tensor]:
        """Slots held by these requests outside the tree (for the integrity check)."""
        return [r.kv_slots[r.cache_protected_len :] for r in reqs if r.kv_slots is not None]
