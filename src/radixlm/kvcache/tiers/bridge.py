"""Between the radix tree (over the KV pool) and a lower cache tier.

`RadixCache` calls `keep(node)` for every leaf it adds (write-through: the
prefix is queued for the tier as soon as it is cached, so it survives a
restart without having been evicted) and for every leaf it is about to evict
(a prefix the tier does not hold yet, e.g. after a dropped write, spills
then, instead of vanishing). Both run while the node's slots still hold its
K/V; the tier copies them out before returning.

`load_deeper(key, extra_key, m)` is the other direction: when the tier
continues a match `m` of the tree, the K/V is read back into freshly
allocated pool slots and inserted into the tree, so the request that asked
reuses it like any cached prefix.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import torch

from radixlm.kvcache.prefix_cache import MatchResult, TreeNode
from radixlm.kvcache.tiers.base import CacheTier

if TYPE_CHECKING:
    from radixlm.kvcache.radix_cache import RadixCache

log = logging.getLogger(__name__)


class TierBridge:
    def __init__(self, cache: RadixCache, tier: CacheTier) -> None:
        self.cache = cache
        self.pool = cache.pool
        self.tier = tier

    def keep(self, node: TreeNode) -> None:
        """Have the tier hold `node`'s tokens (its K/V read from the pool right now)."""
        keys, values = [], []
        n: TreeNode | None = node
        while n is not None and n is not self.cache.root:
            keys.append(n.key)
            values.append(n.value)
            n = n.parent
        key = tuple(t for k in reversed(keys) for t in k)
        slots = torch.cat(values[::-1]) if len(values) > 1 else values[0]
        end = len(key)
        gather = lambda lo, hi: self._gather(slots[lo:hi])  # noqa: E731
        self.tier.save(key, node.extra_key, end - len(node), end, gather)

    def _gather(self, slots: torch.Tensor) -> torch.Tensor:
        """A CPU copy of the K/V in `slots`: [2, num_layers, n, num_kv_heads, head_dim]."""
        pool = self.pool
        return torch.stack([pool.k_buffer[:, slots], pool.v_buffer[:, slots]]).cpu()

    def load_deeper(
        self, key: Sequence[int], extra_key: Hashable | None, m: MatchResult
    ) -> MatchResult:
        """`m` (the tree's match of `key`), extended by what the tier holds beyond it.

        The loaded tokens become an unlocked leaf of the tree and the returned
        match ends there; `m` itself when the tier adds nothing, or the pool
        cannot make room (the tree's match is locked while room is made).
        """
        cache, pool = self.cache, self.pool
        hit = self.tier.lookup(key, extra_key, m.prefix_len)
        if hit.length <= 0:
            return m
        cache.inc_lock_ref(m.last_node)
        try:
            short = hit.length - pool.available_size()
            if short > 0:
                cache.evict(short)
            slots = pool.alloc(hit.length)
            if slots is None:
                return m
            kv = self.tier.read(hit)  # [2, L, got, H, D]; got < length when an entry was bad
            got = kv.shape[2] if kv.dim() == 5 else 0
            if got < hit.length:
                pool.free(slots[got:])
                slots = slots[:got]
            if got:
                pool.k_buffer[:, slots] = kv[0].to(pool.k_buffer.device, pool.shape.dtype)
                pool.v_buffer[:, slots] = kv[1].to(pool.v_buffer.device, pool.shape.dtype)
                if pool.ledger is not None:
                    end = m.prefix_len + got
                    pool.ledger.record(slots, torch.tensor(key[m.prefix_len : end]),
                                       torch.arange(m.prefix_len, end))  # fmt: skip
                full = torch.cat([m.slot_indices, slots])
                done = cache.insert(key[: m.prefix_len + got], full, extra_key)
                if done > m.prefix_len:  # cannot happen on one thread; never leak if it does
                    pool.free(slots[: done - m.prefix_len])
        finally:
            cache.dec_lock_ref(m.last_node)
        return cache.match_prefix(key, extra_key, record=False)

    def clear(self) -> None:
        """The tree was flushed: drop the tier's entries as well."""
        self.tier.clear()
