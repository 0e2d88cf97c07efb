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
from radixlm.kvcache.radix_cache import common_prefix_len


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


class _Node:
    """A compressed trie edge (`key`) and the clock of its last use."""

    __slots__ = ("children", "key", "last")

    def __init__(self, key: tuple[int, ...], last: int) -> None:
        self.key, self.last = key, last
        self.children: dict[int, _Node] = {}


def _walk(root: _Node, seq: tuple[int, ...], limit: int) -> tuple[int, int]:
    """(matched length of seq[:limit], clock of the last use of that prefix)."""
    node, depth, last = root, 0, 0
    while depth < limit and (child := node.children.get(seq[depth])) is not None:
        n = common_prefix_len(child.key, seq, depth, limit)
        depth, last = depth + n, child.last
        if n < len(child.key):
            break
        node = child
    return depth, last


def _insert(root: _Node, seq: tuple[int, ...], clock: int) -> None:
    """Add `seq`, marking every edge on its path used at `clock` (splitting where it ends)."""
    node, depth = root, 0
    while depth < len(seq):
        child = node.children.get(seq[depth])
        if child is None:
            node.children[seq[depth]] = _Node(seq[depth:], clock)
            return
        n = common_prefix_len(child.key, seq, depth)
        if n < len(child.key):  # split: the upper part keeps the lower part's history
            upper = _Node(child.key[:n], child.last)
            child.key = child.key[n:]
            upper.children[child.key[0]] = child
            node.children[seq[depth]] = upper
            child = upper
        child.last = clock
        node, depth = child, depth + n


def reuse_distances(requests: Sequence[ReplayRequest], unit: int = 1) -> Reuse:
    """Reuse distances (in tokens; `unit` tokens per unit) of `requests` in arrival order.

    Each request's prompt plus output is inserted after it is matched; the clock
    advances by the units it computes (its prompt past the reused prefix, and its output).
    """
    roots: dict[Any, _Node] = {}
    clock = 0
    out = Reuse()
    for rr in sorted(requests, key=lambda r: (r.step, r.index)):
        root = roots.setdefault(rr.tenant, _Node((), 0))
        key = tuple(rr.key)
        hit, last = _walk(root, key, len(key) - 1)  # one token is always computed
        out.prompt_tokens += rr.prompt_tokens
        if hit:
            tokens = min(hit * unit, rr.prompt_tokens - 1)
            out.reusable_tokens += tokens
            out.distances.append(((clock - last) * unit, tokens))
        clock += len(key) - hit + len(rr.output)
        _insert(root, key + tuple(rr.output), clock)
    out.distances.sort()
    return out
