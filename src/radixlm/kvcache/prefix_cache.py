"""The interface shared by the radix cache and the disabled (no-reuse) cache.

How a caller (the scheduler) uses a prefix cache for one request, with `p` =
`page_size`, `key` the request's token ids and `slots` its KV slot indices:

1. `m = cache.match_prefix(key)`; `cache.inc_lock_ref(m.last_node)`. The
   request's slot list starts with `m.slot_indices` (its first `m.prefix_len`
   tokens); those slots belong to the cache and stay valid while the lock is held.
2. Allocate slots for the remaining tokens from the pool and run the model.
3. When done: `n = cache.insert(key, slots)`, where `slots` covers every token
   of `key`. The cache now owns `slots[n:aligned]` (`aligned` =
   `cache.page_aligned_len(len(key))`). The caller still owns, and must free,
   `slots[m.prefix_len:n]` (duplicates of K/V another request cached
   meanwhile) and `slots[aligned:]` (the partial last page, not cached).
   Then `cache.dec_lock_ref(m.last_node)`.

The same steps are correct for `ChunkCache` (reuse disabled), whose
`match_prefix` matches nothing and whose `insert` frees `slots[:aligned]`
straight back to the pool and returns 0.

With p > 1 the slot list must be paged: each block `slots[j*p:(j+1)*p]` is one
whole pool page, its slots in order (what `KVPool.alloc` and `match_prefix`
return). A request that grows one token at a time takes the next slot of its
last page (`last + 1`) until the page is full, and only then a new page.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from radixlm.kvcache.ledger import SlotContents

# Anything that holds token ids: list[int], tuple[int, ...], a 1-D numpy array or tensor.
TokenKey = Sequence[int] | np.ndarray | torch.Tensor
# Slots held by live requests outside the tree: a count, one tensor, or one tensor per request.
HeldSlots = int | torch.Tensor | Sequence[torch.Tensor]

_node_ids = itertools.count()


class IntegrityError(AssertionError):
    """The cache, the pool and the requests disagree about who holds which slots."""


class TreeNode:
    """One edge of the radix tree and the node below it.

    `key` (a tuple of n token ids) is the edge's tokens, `value` ([n] int64
    tensor) their KV slot indices. `lock_ref` counts the locks taken on this
    node or on any node below it; a node with lock_ref > 0 is protected from
    eviction. `last_access` is the cache's logical clock at the last match or
    insert that passed through the node; `hits` the requests that reused it.
    """

    __slots__ = ("children", "extra_key", "hits", "id", "key", "last_access", "lock_ref", "parent",
                 "value")  # fmt: skip

    def __init__(
        self,
        parent: TreeNode | None,
        key: tuple[int, ...],
        value: torch.Tensor,
        extra_key: Hashable | None = None,
        last_access: int = 0,
    ) -> None:
        self.id = next(_node_ids)
        self.parent = parent
        # Keyed by the edge's first token (first page as a tuple when page_size > 1);
        # the root's children by (extra_key, that), so namespaces never share a node.
        self.children: dict[Hashable, TreeNode] = {}
        self.key = key
        self.value = value
        self.extra_key = extra_key
        self.lock_ref = 0
        self.last_access = last_access
        self.hits = 0  # requests admitted that reused this node (kvcache.activity counts them)

    def __len__(self) -> int:
        return len(self.key)

    def __repr__(self) -> str:
        return f"TreeNode(id={self.id}, len={len(self.key)}, lock_ref={self.lock_ref})"


@dataclass(frozen=True)
class MatchResult:
    """The longest cached prefix of a key.

    `pieces` (int64 tensors on the pool device, at least one: one per node on
    the path, in order) hold the slots of the K/V of the key's first
    `prefix_len` tokens; `slot_indices` ([prefix_len]) is them joined. They are
    valid only while `last_node` is locked (`inc_lock_ref`): an unlocked node
    may be evicted and its slots reused by the next allocation.
    """

    pieces: tuple[torch.Tensor, ...]
    last_node: TreeNode
    prefix_len: int

    @property
    def slot_indices(self) -> torch.Tensor:
        """The matched slots joined ([prefix_len] int64); a copy unless one piece."""
        return self.pieces[0] if len(self.pieces) == 1 else torch.cat(self.pieces)


class Insertion(NamedTuple):
    """What `insert_below` did.

    `cached` ([n] int64, on the pool device): the tree's slots of the key's first n
    tokens, which it held before; the caller's own slots for them are duplicates
    (the caller frees them), and the tree now owns the caller's slots from n up to
    the page-aligned end of the key. `last_node`: where that page-aligned part now
    ends; its path's slots are safe to read while it is locked.
    """

    cached: torch.Tensor
    last_node: TreeNode


def key_tuple(key: TokenKey) -> tuple[int, ...]:
    """Token ids as a tuple of Python ints (a tuple is returned as is)."""
    if isinstance(key, tuple):
        return key
    if isinstance(key, list):
        return tuple(key)
    if isinstance(key, torch.Tensor | np.ndarray):
        return tuple(key.reshape(-1).tolist())
    return tuple(int(t) for t in key)


class PrefixCache(ABC):
    """Maps token sequences to the KV slots that hold them; see the module docstring."""

    page_size: int
    root: TreeNode  # matches start here (a cache that shares nothing has only the root)
    # Whether inserted sequences stay cached for later requests to share. Either way
    # `insert(key, slots)` takes ownership of slots[n:] (the tree keeps them, or they are
    # freed) and returns n, the leading tokens cached already: the caller frees [its
    # protected length, n), its duplicates.
    shares_prefixes: bool = True
    tokens_queried: int = 0  # tokens of every recorded match_prefix key
    tokens_hit: int = 0  # of those, tokens found in the cache

    def page_aligned_len(self, n: int) -> int:
        """The longest page-aligned length <= n: how much of a key the cache can hold."""
        return n - n % self.page_size

    @abstractmethod
    def match_prefix(
        self, key: TokenKey, extra_key: Hashable | None = None, *, record: bool = True
    ) -> MatchResult:
        """The longest cached, page-aligned prefix of `key` in namespace `extra_key`."""

    @abstractmethod
    def insert(
        self, key: TokenKey, slot_indices: torch.Tensor, extra_key: Hashable | None = None
    ) -> int:
        """Cache `key` with its slots; return how many leading tokens were cached already."""

    @abstractmethod
    def insert_below(
        self, node: TreeNode, key: TokenKey, slot_indices: torch.Tensor,
        extra_key: Hashable | None = None,
    ) -> Insertion:
        """`insert` of a key whose first tokens are `node`'s path, given only the rest.

        `node` must be locked (so its path is still cached; it is `root` for an empty
        path), and `key`/`slot_indices` are the tokens after its path and their slots.
        The same ownership rule holds, counted from the end of `node`'s path: see
        `Insertion`. Cheaper than `insert` of the whole key: the path is not walked
        again, only refreshed. Unlike `insert`, the tree may keep views of
        `slot_indices` rather than copies: the caller hands the tensor over and must
        not write to it afterwards.
        """

    @abstractmethod
    def inc_lock_ref(self, node: TreeNode) -> int:
        """Protect `node` and its ancestors from eviction; return tokens newly protected."""

    @abstractmethod
    def dec_lock_ref(self, node: TreeNode) -> int:
        """Undo one `inc_lock_ref(node)`; return tokens that became evictable."""

    @abstractmethod
    def evict(self, num_tokens: int) -> int:
        """Free at least `num_tokens` unlocked tokens if possible; return how many were freed."""

    @abstractmethod
    def reset(self) -> None:
        """Drop every cached sequence, returning its slots to the pool."""

    @abstractmethod
    def check_integrity(self, held_by_requests: HeldSlots = 0) -> None:
        """Raise `IntegrityError` unless the cache, the pool and the requests add up."""

    def slot_contents(self) -> SlotContents:
        """Every cached slot with the token and position it holds (none by default)."""
        return SlotContents.empty()

    @property
    @abstractmethod
    def evictable_size(self) -> int:
        """Cached tokens that eviction may free now."""

    @property
    @abstractmethod
    def protected_size(self) -> int:
        """Cached tokens on locked paths."""

    @property
    def total_size(self) -> int:
        """All cached tokens."""
        return self.evictable_size + self.protected_size

    @property
    def hit_rate(self) -> float:
        """tokens_hit / tokens_queried over recorded matches (0.0 before any)."""
        return self.tokens_hit / self.tokens_queried if self.tokens_queried else 0.0
