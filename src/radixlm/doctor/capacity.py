"""Capacity: how far back each reusable prefix was last used, against the pool size.

A request can reuse a prefix only if that prefix is still cached when it arrives.
Under least-recently-used eviction it is, roughly, when fewer tokens than the
pool holds were computed since the prefix was last used: that count is the reuse
distance. `reuse_distances` walks the requests in arrival order over a token trie
that remembers, at each node, the computed-token clock of its last use.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from radixlm.doctor.units import ReplayRequest


@dataclass
class Reuse:
    """Reusable tokens (unlimited memory, arrival order) and their reuse distances."""

    reusable_tokens: int = 0  # prompt tokens some earlier sequence held
    prompt_tokens: int = 0
    distances: list[tuple[int, int]] = field(default_factory=list)  # (distance, tokens), sorted

    @property
    def oracle(self) -> float:
        """The oracle hit rate: reusable over all prompt tokens (unlimited memory)."""
        return self.reusable_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def within(self, pool_tokens: int) -> int:
        """Reusable tokens whose reuse distance is at most `pool_tokens`."""
        k = bisect.bisect_right(self.distances, (pool_tokens, 1 << 62))
        return sum(t for _, t in self.distances[:k])

    def pool_for(self, share: float) -> int:
        """The smallest reuse distance that covers `share` of the reusable tokens."""
        need, got = share * self.reusable_tokens, 0
        for d, t in self.distances:
            got += t
            if got >= need:
                return d
        return self.distances[-1][0] if self.distances else 0

    def to_dict(self, pool_tokens: int) -> dict[str, Any]:
        r = self.reusable_tokens
        return {"reusable_tokens": r, "prompt_tokens": self.prompt_tokens,
                "within_pool": self.within(pool_tokens),
                "pool_for_90": self.pool_for(0.9), "pool_for_99": self.pool_for(0.99),
                "share_within_pool": self.within(pool_tokens) / r if r else 0.0}  # fmt: skip


def reuse_distances(requests: Sequence[ReplayRequest], unit: int = 1) -> Reuse:
    """Reuse distances (in tokens; `unit` tokens per unit) of `requests` in arrival order.

    Each request's prompt plus output is inserted after it is matched; the clock
    advances by the units it computes (its prompt past the reused prefix, and its output).
    """
    root: dict[Any, list] = {}
    clock = 0
    out = Reuse()
    for rr in sorted(requests, key=lambda r: (r.step, r.index)):
        node, last, depth = root.get(rr.tenant), None, 0
        if node is None:
            node = root[rr.tenant] = [{}, 0]
        key = rr.key
        limit = len(key) - 1  # one token is always computed
        while depth < limit and (child := node[0].get(key[depth])) is not None:
            node, last, depth = child, child[1], depth + 1
        hit = depth
        out.prompt_tokens += rr.prompt_tokens
        if hit:
            tokens = min(hit * unit, rr.prompt_tokens - 1)
            out.reusable_tokens += tokens
            out.distances.append(((clock - last) * unit, tokens))
        clock += len(key) - hit + len(rr.output)
        node = root[rr.tenant]
        for tok in (*key, *rr.output):
            child = node[0].get(tok)
            if child is None:
                child = node[0][tok] = [{}, clock]
            child[1] = clock
            node = child
    out.distances.sort()
    return out
