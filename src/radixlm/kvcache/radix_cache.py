"""The radix cache: a compressed radix tree (Patricia trie) from token ids to KV slots.

Every root-to-node path spells a cached token sequence; each node holds the
token ids of its incoming edge (`key`, numpy int64) and the KV slot indices of
those tokens (`value`, int64 tensor on the pool device). Children are keyed by
`(extra_key, first page of the edge's tokens as bytes)`, so namespaces
(`extra_key`, e.g. a per-tenant cache salt) never share a node.

Invariants (checked by `check_integrity`):
- every non-root edge is non-empty, a whole number of pages, and its key and
  value have the same length;
- `lock_ref(node) >= sum(lock_ref(child))`: a lock on a node is counted on
  every node up to the root, so a locked node's ancestors are locked too;
- `evictable_size` = tokens on nodes with lock_ref == 0, `protected_size` =
  tokens on nodes with lock_ref > 0;
- `_leaves` is exactly the set of unlocked, childless, non-root nodes (the
  eviction candidates);
- pool free + cached + held by requests == pool total, no slot in two places.

Matching compares a whole edge with one vectorised numpy comparison; Python
work is per node on the path, never per token.

See `prefix_cache` for the caller's protocol (lock, insert, free duplicates).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable

import numpy as np
import torch

from radixlm.kvcache import integrity
from radixlm.kvcache.integrity import check
from radixlm.kvcache.pool import KVPool
from radixlm.kvcache.prefix_cache import (
    HeldSlots,
    MatchResult,
    PrefixCache,
    TokenKey,
    TreeNode,
    key_array,
)

_EMPTY_KEY = np.empty(0, dtype=np.int64)


def common_prefix_len(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two 1-D int arrays (one vectorised compare)."""
    m = min(len(a), len(b))
    neq = a[:m] != b[:m]
    first = int(neq.argmax()) if m else 0
    return first if m and neq[first] else m


class RadixCache(PrefixCache):
    """Prefix reuse over a `KVPool`: match, insert, lock, evict (LRU leaves first).

    The cache owns the slots of every node in the tree and returns them to the
    pool when it evicts a node or resets. Page size is the pool's.
    """

    def __init__(self, pool: KVPool) -> None:
        self.pool = pool
        self.page_size = pool.page_size
        self._empty_value = torch.empty(0, dtype=torch.int64, device=pool.device)
        self.reset_state()

    def reset_state(self) -> None:
        """Forget the tree without touching the pool (for a pool that was just cleared).

        The root object survives, so a caller's lock on it (an empty match) stays valid.
        """
        if not hasattr(self, "root"):
            self.root = TreeNode(None, _EMPTY_KEY, self._empty_value)
        self.root.children = {}
        self._evictable = 0
        self._protected = 0
        self._leaves: set[TreeNode] = set()  # unlocked childless non-root nodes
        self._clock = 0
        self.tokens_queried = 0
        self.tokens_hit = 0

    # -- sizes ---------------------------------------------------------------

    @property
    def evictable_size(self) -> int:
        return self._evictable

    @property
    def protected_size(self) -> int:
        return self._protected

    # -- match / insert ------------------------------------------------------

    def match_prefix(
        self, key: TokenKey, extra_key: Hashable | None = None, *, record: bool = True
    ) -> MatchResult:
        """The longest cached, page-aligned prefix of `key` in namespace `extra_key`.

        Returns its slot indices (concatenated along the path) and the node
        where the match ends. If the match ends inside an edge, that node is
        split so `last_node` ends exactly at the prefix. Refreshes the access
        time of every node on the path. With `record`, adds to the hit counters.

        The slots are safe to read only while `last_node` is locked: lock it
        with `inc_lock_ref` before anything can call `evict`. A caller that
        must compute at least one token should match `key[:-1]`.
        """
        arr = key_array(key)
        tick = self._tick()
        node, pos, values = self.root, 0, []
        n = self.page_aligned_len(len(arr))
        while pos < n:
            child = node.children.get(self._child_key(extra_key, arr, pos))
            if child is None:
                break
            c = self._common_len(child.key, arr[pos:n])
            ends_inside = c < len(child.key)
            if ends_inside:
                child = self._split(child, c)
            child.last_access = tick
            values.append(child.value)
            node, pos = child, pos + c
            if ends_inside:
                break
        if record:
            self.tokens_queried += len(arr)
            self.tokens_hit += pos
        slots = self._cat(values)
        return MatchResult(slot_indices=slots, last_node=node)

    def insert(
        self, key: TokenKey, slot_indices: torch.Tensor, extra_key: Hashable | None = None
    ) -> int:
        """Cache the page-aligned part of `key` with its slots; return the length already cached.

        `slot_indices` ([len(key)] int) are the key's slots. Returns n, the number
        of leading tokens that were in the tree before; the tree takes
        ownership of `slot_indices[n:page_aligned_len(len(key))]` (copied, so
        the caller may reuse its tensor) and leaves the rest to the caller
        (see `prefix_cache` for what the caller frees). Refreshes access times.
        """
        arr = key_array(key, copy=True)
        if slot_indices.numel() != len(arr):
            raise ValueError(f"{len(arr)} tokens but {slot_indices.numel()} slot indices")
        n = self.page_aligned_len(len(arr))
        tick = self._tick()
        node, pos = self.root, 0
        while pos < n:
            ckey = self._child_key(extra_key, arr, pos)
            child = node.children.get(ckey)
            if child is None:
                value = slot_indices[pos:n].to(device=self.pool.device, dtype=torch.int64)
                self._add_leaf(node, ckey, arr[pos:n], value.clone(), extra_key, tick)
                return pos
            c = self._common_len(child.key, arr[pos:n])
            if c < len(child.key):
                child = self._split(child, c)
            child.last_access = tick
            node, pos = child, pos + c
        return pos

    # -- locks ---------------------------------------------------------------

    def inc_lock_ref(self, node: TreeNode) -> int:
        """Lock the path root..node against eviction; return how many tokens became protected.

        Every node on the path counts the lock; call `dec_lock_ref(node)` once
        for each call of this.
        """
        newly = 0
        while node is not self.root:
            if node.lock_ref == 0:
                newly += len(node)
                self._leaves.discard(node)
            node.lock_ref += 1
            node = node.parent  # type: ignore[assignment]
        self._evictable -= newly
        self._protected += newly
        return newly

    def dec_lock_ref(self, node: TreeNode) -> int:
        """Release one lock taken by `inc_lock_ref(node)`; return tokens that became evictable."""
        if node is not self.root and node.lock_ref <= 0:
            raise RuntimeError(f"dec_lock_ref on an unlocked node {node!r}")
        freed = 0
        while node is not self.root:
            node.lock_ref -= 1
            if node.lock_ref == 0:
                freed += len(node)
                if not node.children:
                    self._leaves.add(node)
            node = node.parent  # type: ignore[assignment]
        self._evictable += freed
        self._protected -= freed
        return freed

    # -- eviction ------------------------------------------------------------

    def evict(self, num_tokens: int) -> int:
        """Free unlocked leaves, least recently used first, until `num_tokens` are freed.

        A parent whose last child goes becomes a leaf and a candidate in turn.
        Returns the number of tokens freed (their slots are back in the pool);
        less than asked when everything unlocked is gone.
        """
        if num_tokens <= 0 or not self._leaves:
            return 0
        heap = [(n.last_access, n.id, n) for n in self._leaves]
        heapq.heapify(heap)
        freed, values = 0, []
        while freed < num_tokens and heap:
            _, _, node = heapq.heappop(heap)
            values.append(node.value)
            freed += len(node)
            parent = self._remove_leaf(node)
            if parent in self._leaves:  # it just became an unlocked leaf
                heapq.heappush(heap, (parent.last_access, parent.id, parent))
        self.pool.free(self._cat(values))
        return freed

    def reset(self) -> None:
        """Drop the whole tree and return its slots to the pool; counters restart.

        Raises RuntimeError while any node is locked (a running request still
        reads those slots).
        """
        if self._protected:
            raise RuntimeError(f"cannot reset: {self._protected} cached tokens are locked")
        self.pool.free(self._cat([n.value for n in self._nodes()]))
        self.reset_state()

    # -- integrity -----------------------------------------------------------

    def check_integrity(self, held_by_requests: HeldSlots = 0) -> None:
        """Raise IntegrityError unless the tree's invariants and the slot accounting hold.

        `held_by_requests`: the slots live requests hold outside the tree (their
        own allocations not yet inserted), as a count or as slot tensors. See
        the module docstring for the invariants.
        """
        evictable = protected = 0
        leaves = set()
        values = []
        for node in self._nodes():
            self._check_node(node)
            if node.lock_ref:
                protected += len(node)
            else:
                evictable += len(node)
                if not node.children:
                    leaves.add(node)
            values.append(node.value)
        check(evictable == self._evictable, f"evictable {self._evictable} != counted {evictable}")
        check(protected == self._protected, f"protected {self._protected} != counted {protected}")
        check(leaves == self._leaves, "the eviction candidate set is stale")
        integrity.check_slot_accounting(self.pool, self._cat(values), held_by_requests)

    def _check_node(self, node: TreeNode) -> None:
        parent = node.parent
        check(parent is not None, "a non-root node without a parent")
        assert parent is not None
        check(len(node.key) > 0, "an empty edge")
        check(len(node.key) == node.value.numel(), "edge key and value lengths differ")
        check(len(node.key) % self.page_size == 0, "an edge that is not whole pages")
        ckey = self._child_key(node.extra_key, node.key, 0)
        check(parent.children.get(ckey) is node, "a node is not under its own child key")
        check(parent is self.root or parent.extra_key == node.extra_key, "namespaces mixed")
        check(node.lock_ref >= 0, "negative lock_ref")
        below = sum(c.lock_ref for c in node.children.values())
        check(node.lock_ref >= below, "lock_ref smaller than its children's locks")
        integrity.check_whole_pages(node.value, self.page_size)

    # -- internals -----------------------------------------------------------

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _child_key(
        self, extra_key: Hashable | None, arr: np.ndarray, pos: int
    ) -> tuple[Hashable | None, bytes]:
        return (extra_key, arr[pos : pos + self.page_size].tobytes())

    def _common_len(self, edge: np.ndarray, rest: np.ndarray) -> int:
        c = common_prefix_len(edge, rest)
        return c - c % self.page_size

    def _cat(self, values: list[torch.Tensor]) -> torch.Tensor:
        if not values:
            return self._empty_value
        return values[0] if len(values) == 1 else torch.cat(values)

    def _split(self, node: TreeNode, at: int) -> TreeNode:
        """Cut `node`'s edge at `at` (0 < at < len); return the new upper node.

        `node` keeps its identity as the lower part, so references callers hold
        (e.g. a locked `last_node`) still end at the same token. The upper part
        inherits lock_ref: every lock through `node` also passes through it.
        """
        parent = node.parent
        assert parent is not None and 0 < at < len(node)
        upper = TreeNode(parent, node.key[:at], node.value[:at], node.extra_key, node.last_access)
        upper.lock_ref = node.lock_ref
        parent.children[self._child_key(node.extra_key, node.key, 0)] = upper
        node.key, node.value, node.parent = node.key[at:], node.value[at:], upper
        upper.children[self._child_key(node.extra_key, node.key, 0)] = node
        return upper

    def _add_leaf(
        self,
        parent: TreeNode,
        ckey: tuple[Hashable | None, bytes],
        key: np.ndarray,
        value: torch.Tensor,
        extra_key: Hashable | None,
        tick: int,
    ) -> None:
        leaf = TreeNode(parent, key, value, extra_key, tick)
        self._leaves.discard(parent)  # no longer childless
        parent.children[ckey] = leaf
        self._leaves.add(leaf)
        self._evictable += len(leaf)

    def _remove_leaf(self, node: TreeNode) -> TreeNode:
        """Unlink an unlocked leaf (its slots are the caller's to free); return its parent."""
        parent = node.parent
        assert parent is not None and not node.children and node.lock_ref == 0
        del parent.children[self._child_key(node.extra_key, node.key, 0)]
        self._leaves.discard(node)
        self._evictable -= len(node)
        if parent is not self.root and not parent.children and parent.lock_ref == 0:
            self._leaves.add(parent)
        return parent

    def _nodes(self) -> list[TreeNode]:
        """Every non-root node (iterative pre-order)."""
        out, stack = [], list(self.root.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out
