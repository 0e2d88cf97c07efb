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
from radixlm.kvcache.prefix_cache import Insertion, MatchResult, PrefixCache
from radixlm.scheduler.request import Req


class KVManager:
    def __init__(self, pool: KVPool, cache: PrefixCache) -> None:
        if pool.page_size != 1:
            raise ValueError("the scheduler runs with page_size 1")
        self.pool = pool
        self.cache = cache
        self.tier = getattr(cache, "tier", None)  # a lower cache tier (kvcache.tiers), or None
        # (req, cache generation, key length, result) of the last match; see `match`.
        self._last_match: tuple[Req, int, int, MatchResult] | None = None

    # -- matching and admission ------------------------------------------------

    def match(self, req: Req) -> MatchResult:
        """The longest cached prefix `req` may reuse.

        The key stops at `req.max_prefix_len()`, so at least one token (and every
        position whose prompt logprobs are wanted) is computed. The result is valid
        until the next allocation or eviction unless `lock_and_allocate` locks it.
        With a lower cache tier, a prefix it continues is first loaded back into
        the pool (and the tree), so the match covers it.

        Matching the request matched last again, with the tree's `generation`
        unchanged since, returns that result: the lookup would find the same prefix
        and only stamp the same path a tick later, which leaves the LRU order as it
        is. (The policy's ordering and admission both match the head of the queue.)
        """
        n = req.max_prefix_len()
        gen = getattr(self.cache, "generation", None)
        last = self._last_match
        if last is not None and last[0] is req and last[1] == gen and last[2] == n:
            return last[3]
        key = req.prefix_key(n)
        m = self.cache.match_prefix(key, req.extra_key, record=False)
        if self.tier is not None and m.prefix_len < len(key):
            m = self.tier.load_deeper(key, req.extra_key, m)
        elif gen is not None:  # (a tier may find more later: it is asked every time)
            self._last_match = (req, self.cache.generation, n, m)
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
        req.set_slots([*m.pieces, new])
        req.cache_protected_len = m.prefix_len
        req.last_node = m.last_node
        return True

    def extend(self, req: Req, n: int) -> bool:
        """Append n fresh slots to a running request (next chunk or decode token)."""
        new = self.alloc(n)
        if new is None:
            return False
        req.append_slots(new)
        return True

    def reserve_decode(self, reqs: list[Req], sizes: list[int]) -> bool:
        """Append `sizes[i]` fresh slots to running request i (its next token and draft);
        False, and nothing changed, when the pool cannot hold them all."""
        new = self.alloc(sum(sizes))
        if new is None:
            return False
        # split_with_sizes: one C call (Tensor.split's Python wrapper cost ~2 us a step).
        for req, slots in zip(reqs, new.split_with_sizes(sizes), strict=True):
            req.append_slots(slots)
        return True

    def set_aside_drafts(self, req: Req, n: int) -> torch.Tensor:
        """Take the slots of `req`'s last `n` (draft) tokens out of its K/V; returns them.

        The caller gives each back with `keep_draft_slot` or frees it.
        """
        slots = req.kv_slots
        assert slots is not None
        spare = slots[req.kv_len - n :]
        req.set_slots([slots[: req.kv_len - n]])
        return spare

    def keep_draft_slot(self, req: Req, slot: torch.Tensor) -> None:
        """A draft token was accepted: its slot ([1]) joins `req`'s K/V again."""
        req.append_slots(slot)

    # -- caching and release ---------------------------------------------------

    def cache_unfinished(self, req: Req) -> None:
        """Insert the tokens computed so far into the tree; the request keeps running.

        Duplicate slots (K/V another request cached meanwhile) are freed and
        replaced by the tree's, and the lock moves down to the new last node.
        """
        if not self.cache.shares_prefixes or not req.has_kv:
            return  # a cache that shares nothing gets a request's slots when it ends
        head, own = req.split_slots()
        done = self._insert_own(req, own)
        self.cache.inc_lock_ref(done.last_node)
        self.cache.dec_lock_ref(req.last_node)
        n = done.cached.shape[0]
        req.set_slots([*head, done.cached, own[n:]] if n else [*head, own])
        req.last_node = done.last_node  # the tree holds every token up to it now
        req.cache_protected_len += self.cache.page_aligned_len(own.shape[0])

    def release(self, req: Req) -> None:
        """A request leaves the running set: cache its K/V, free what the tree did not take."""
        if not req.has_kv:
            return
        self._insert_own(req, req.split_slots()[1])  # the tree owns the rest now
        self.cache.dec_lock_ref(req.last_node)
        req.set_slots(None)
        req.last_node, req.cache_protected_len = None, 0

    def _insert_own(self, req: Req, own: torch.Tensor) -> Insertion:
        """Insert `req`'s tokens after its locked prefix (`own` their slots), freeing the
        duplicates of tokens the tree held already."""
        assert req.last_node is not None
        key = req.prefix_key(req.kv_len, req.cache_protected_len)
        done = self.cache.insert_below(req.last_node, key, own, req.extra_key)
        n = done.cached.shape[0]
        if n:  # another request cached these tokens meanwhile
            self.pool.free(own[:n])
        return done

    def discard(self, req: Req) -> None:
        """A request's step failed: free the slots it owns and unlock, caching nothing.

        Only `kv_slots[cache_protected_len:]` are freed: what the tree holds was
        computed by steps that succeeded, and the failed forward wrote only to
        the request's own new slots.
        """
        if not req.has_kv:
            return
        self.pool.free(req.split_slots()[1])
        self.cache.dec_lock_ref(req.last_node)
        req.set_slots(None)
        req.last_node, req.cache_protected_len = None, 0

    def owned_slots(self, reqs: list[Req]) -> list[torch.Tensor]:
        """Slots held by these requests outside the tree (for the integrity check)."""
        return [r.split_slots()[1] for r in reqs if r.has_kv]
