"""The radix cache: a compressed radix tree (Patricia trie) from token ids to KV slots.

Every root-to-node path spells a cached token sequence; each node holds the
token ids of its incoming edge (`key`, a tuple of ints) and the KV slot indices
of those tokens (`value`, int64 tensor on the pool device). Children are keyed
by the edge's first token (first page, as a tuple, when page_size > 1); the
root's children by `(extra_key, first token or page)`, so namespaces
(`extra_key`, e.g. a per-tenant cache salt) never share a node.

Invariants (checked by `check_integrity`):
- every non-root edge is non-empty, a whole number of pages, and its key and
  value have the same length;
- `lock_ref(node) >= sum(lock_ref(child))`: a lock on a node is counted on
  every node up to the root, so a locked node's ancestors are locked too;
- `evictable_size` = tokens on nodes with lock_ref == 0, `protected_size` =
  tokens on nodes with lock_ref > 0;
- `_leaves` is exactly the set of unlocked, childless, non-root nodes (the
  eviction candidates), and `_heap` holds an entry `(last_access, id, node)`
  for each of them with its current access time (plus stale entries, skipped
  when popped: eviction pops instead of rescanning the tree);
- pool free + cached + held by requests == pool total, no slot in two places.

Matching compares a whole edge at once: `key[pos:pos + len(edge)] == edge` on
tuples runs in C. Only at the edge where the match ends is the first mismatch
located, by comparing 64-token chunks and then one numpy comparison of the
differing chunk. Python work is per node on the path (and per chunk of the
last edge), never per token.

Why tuples rather than numpy arrays (measured in benchmarks/radix_cache.md):
keys arrive as lists of ints, which become a tuple ~10x faster than a numpy
array (~4 µs against ~35 µs for 2,000 tokens), and a short edge compares in
~0.3 µs against numpy's ~2 µs fixed cost per call. A long edge costs ~12 ns
per token to compare as tuples against ~1 ns as arrays, which is about what
the array conversion of the key would have cost. A cached token takes ~8
bytes of tuple plus its int object (~36 bytes in all).

See `prefix_cache` for the caller's protocol (lock, insert, free duplicates).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import torch

from radixlm.kvcache import integrity
from radixlm.kvcache.activity import EvictionLog
from radixlm.kvcache.integrity import check
from radixlm.kvcache.ledger import SlotContents
from radixlm.kvcache.pool import KVPool
from radixlm.kvcache.prefix_cache import (
    HeldSlots,
    Insertion,
    MatchResult,
    PrefixCache,
    TokenKey,
    TreeNode,
    key_tuple,
)

if TYPE_CHECKING:
    from radixlm.kvcache.events import BlockTracker
    from radixlm.kvcache.tiers.bridge import TierBridge

_CHUNK = 64  # the first run `common_prefix_len` compares at once (runs then double)


def common_prefix_len(
    edge: Sequence[int], key: Sequence[int], start: int = 0, end: int | None = None
) -> int:
    """Length of the longest common prefix of `edge` and `key[start:end]`.

    Two tuples (or two lists) of ints: a tuple never equals a list. Every step is one
    C-level slice comparison: runs of doubling length (from 64) skip the equal part,
    then the first run that differs is halved down to the first differing token, so a
    prefix of n tokens costs about 2 log2(n) comparisons.
    """
    m = min(len(edge), (len(key) if end is None else end) - start)
    lo, run = 0, _CHUNK
    while True:  # edge[:lo] == key[start:start + lo]
        if lo >= m:
            return m
        hi = min(lo + run, m)
        if edge[lo:hi] != key[start + lo : start + hi]:
            break
        lo, run = hi, 2 * run
    while hi - lo > 1:  # the first difference lies in [lo, hi)
        mid = (lo + hi) // 2
        if edge[lo:mid] == key[start + lo : start + mid]:
            lo = mid
        else:
            hi = mid
    return lo


class RadixCache(PrefixCache):
    """Prefix reuse over a `KVPool`: match, insert, lock, evict (LRU leaves first).

    The cache owns the slots of every node in the tree and returns them to the
    pool when it evicts a node or resets. Page size is the pool's.
    """

    def __init__(self, pool: KVPool) -> None:
        self.pool = pool
        self.page_size = pool.page_size
        self._empty_value = torch.empty(0, dtype=torch.int64, device=pool.device)
        self.root = TreeNode(None, (), self._empty_value)
        self.evictions = EvictionLog()  # the recent evictions, for the live cache view
        # A lower tier (kvcache.tiers), told of each new leaf and each leaf about to be
        # evicted while its slots still hold its K/V; None without --cache-dir.
        self.tier: TierBridge | None = None
        self.events: BlockTracker | None = None  # KV events (kvcache.events); None: off
        self._generation = 0
        self.reset_state()

    def reset_state(self) -> None:
        """Forget the tree without touching the pool (for a pool that was just cleared).

        The root object survives, so a caller's lock on it (an empty match) stays valid.
        """
        self.root.children = {}
        self._evictable = 0
        self._protected = 0
        self._leaves: set[TreeNode] = set()  # unlocked childless non-root nodes
        self._heap: list[tuple[int, int, TreeNode]] = []  # LRU order over _leaves, lazily
        self._clock = 0
        self._generation += 1
        self.tokens_queried = 0
        self.tokens_hit = 0

    # -- sizes ---------------------------------------------------------------

    @property
    def evictable_size(self) -> int:
        return self._evictable

    @property
    def clock(self) -> int:
        """The logical clock: the tick of the last match or insert (`last_access` units)."""
        return self._clock

    @property
    def generation(self) -> int:
        """A number that changes with every match, insert, eviction and reset (never
        repeats): while it is unchanged, a match result is current and no access time
        was set after it."""
        return self._generation

    @property
    def protected_size(self) -> int:
        return self._protected

    # -- match / insert ------------------------------------------------------

    def match_prefix(
        self, key: TokenKey, extra_key: Hashable | None = None, *, record: bool = True
    ) -> MatchResult:
        """The longest cached, page-aligned prefix of `key` in namespace `extra_key`.

        Returns its slots (one piece per node on the path, joined on demand) and the node
        where the match ends. If the match ends inside an edge, that node is
        split so `last_node` ends exactly at the prefix. Refreshes the access
        time of every node on the path. With `record`, adds to the hit counters.

        The slots are safe to read only while `last_node` is locked: lock it
        with `inc_lock_ref` before anything can call `evict`. A caller that
        must compute at least one token should match `key[:-1]`.
        """
        toks = key_tuple(key)
        tick = self._tick()
        root, ps = self.root, self.page_size
        node, pos, values = root, 0, []
        n = self.page_aligned_len(len(toks))
        while pos < n:  # hot loop: one iteration per node on the path (_child_key inlined)
            first = toks[pos] if ps == 1 else toks[pos : pos + ps]
            child = node.children.get((extra_key, first) if node is root else first)
            if child is None:
                break
            edge_len = len(child.key)
            if pos + edge_len <= n and toks[pos : pos + edge_len] == child.key:
                child.last_access = tick  # the whole edge matches: descend
                values.append(child.value)
                node, pos = child, pos + edge_len
                continue
            c = self._match_edge(child.key, toks, pos, n)
            if c < edge_len:  # the match ends inside this edge
                child = self._split(child, c)
            child.last_access = tick
            values.append(child.value)
            node, pos = child, pos + c
            break
        self._touched(node)
        if record:
            self.tokens_queried += len(toks)
            self.tokens_hit += pos
        # The pieces stay apart: a request keeps them as the head of its slot list.
        return MatchResult(tuple(values) or (self._empty_value,), node, pos)

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
        return self._insert(key, slot_indices, extra_key, None)[0]

    def insert_below(
        self, node: TreeNode, key: TokenKey, slot_indices: torch.Tensor,
        extra_key: Hashable | None = None,
    ) -> Insertion:
        """See `PrefixCache.insert_below`. `node`'s path gets the fresh access time the
        whole walk of `insert` would have given it (walking up its parents)."""
        values: list[torch.Tensor] = []
        _, end = self._insert(key, slot_indices, extra_key, values, node, copy=False)
        return Insertion(self._cat(values), end)

    def _insert(
        self, key: TokenKey, slot_indices: torch.Tensor, extra_key: Hashable | None,
        values: list[torch.Tensor] | None, start: TreeNode | None = None, copy: bool = True,
    ) -> tuple[int, TreeNode]:
        """The insert walk of `key` below `start` (the root when None): (tokens cached
        before, node where the key ends). Appends to `values`, when given, the slots of
        the part that was cached before. Without `copy`, a new leaf keeps a view of
        `slot_indices` when it is int64 on the pool device."""
        toks = key_tuple(key)
        if slot_indices.numel() != len(toks):
            raise ValueError(f"{len(toks)} tokens but {slot_indices.numel()} slot indices")
        n = self.page_aligned_len(len(toks))
        tick = self._tick()
        node, pos = (self.root if start is None else start), 0
        up = node
        while up is not self.root:  # the path above `start`: as if walked again
            up.last_access = tick
            up = up.parent  # type: ignore[assignment]
        self._touched(node)
        while pos < n:
            ckey = self._child_key(node, extra_key, toks, pos)
            child = node.children.get(ckey)
            if child is None:
                value = self._own_slots(slot_indices[pos:n], copy)
                return pos, self._add_leaf(node, ckey, toks[pos:n], value, extra_key, tick)
            c = self._match_edge(child.key, toks, pos, n)
            if c < len(child.key):
                child = self._split(child, c)
            child.last_access = tick
            if values is not None:
                values.append(child.value)
            node, pos = child, pos + c
        self._touched(node)  # the whole key was cached already
        return pos, node

    # -- locks ---------------------------------------------------------------

    def inc_lock_ref(self, node: TreeNode) -> int:
        """Lock the path root..node against eviction; return how many tokens became protected.

        Every node on the path counts the lock; call `dec_lock_ref(node)` once
        for each call of this.
        """
        newly = 0
        while node is not self.root:
            if node.lock_ref == 0:
                newly += len(node.key)
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
                freed += len(node.key)
                if not node.children:
                    self._add_candidate(node)
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
        freed, values = 0, []
        heap = self._heap
        while freed < num_tokens and heap:
            stamp, _, node = heapq.heappop(heap)
            if node not in self._leaves or stamp != node.last_access:
                continue  # stale: locked, evicted, given children or touched since
            values.append(node.value)
            freed += len(node.key)
            self.evictions.record(node)
            if self.tier is not None:
                self.tier.keep(node)  # spill before the slots go back to the pool
            self._remove_leaf(node)  # its parent may become a candidate in turn
        if values:
            self._generation += 1
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
        if self.tier is not None:
            self.tier.clear()  # a flush drops the lower tier's copies too
        if self.events is not None:
            self.events.cleared()

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
        live = {(stamp, node.id) for stamp, _, node in self._heap}
        fresh = all((n.last_access, n.id) in live for n in leaves)
        check(fresh, "an eviction candidate has no heap entry at its access time")
        integrity.check_slot_accounting(self.pool, self._cat(values), held_by_requests)

    def slot_contents(self) -> SlotContents:
        """Every cached slot with the token and position the tree says it holds."""
        slots, tokens, positions = [], [], []
        stack = [(child, 0) for child in self.root.children.values()]
        while stack:
            node, depth = stack.pop()
            slots.append(node.value.cpu())
            tokens.append(torch.tensor(node.key, dtype=torch.int64))
            positions.append(torch.arange(depth, depth + len(node.key), dtype=torch.int64))
            stack.extend((c, depth + len(node.key)) for c in node.children.values())
        if not slots:
            return SlotContents.empty()
        return SlotContents(torch.cat(slots), torch.cat(tokens), torch.cat(positions))

    def _check_node(self, node: TreeNode) -> None:
        parent = node.parent
        check(parent is not None, "a non-root node without a parent")
        assert parent is not None
        check(len(node.key) > 0, "an empty edge")
        check(len(node.key) == node.value.numel(), "edge key and value lengths differ")
        check(len(node.key) % self.page_size == 0, "an edge that is not whole pages")
        ckey = self._child_key(parent, node.extra_key, node.key, 0)
        check(parent.children.get(ckey) is node, "a node is not under its own child key")
        check(parent is self.root or parent.extra_key == node.extra_key, "namespaces mixed")
        check(node.lock_ref >= 0, "negative lock_ref")
        below = sum(c.lock_ref for c in node.children.values())
        check(node.lock_ref >= below, "lock_ref smaller than its children's locks")
        integrity.check_whole_pages(node.value, self.page_size)

    # -- internals -----------------------------------------------------------

    def _tick(self) -> int:
        self._clock += 1
        self._generation += 1
        return self._clock

    def _child_key(
        self, parent: TreeNode, extra_key: Hashable | None, toks: tuple[int, ...], pos: int
    ) -> Hashable:
        first = toks[pos] if self.page_size == 1 else toks[pos : pos + self.page_size]
        return (extra_key, first) if parent is self.root else first

    def _match_edge(self, edge: tuple[int, ...], toks: tuple[int, ...], pos: int, end: int) -> int:
        """Page-aligned length of the common prefix of `edge` and `toks[pos:end]`."""
        if pos + len(edge) <= end and toks[pos : pos + len(edge)] == edge:
            return len(edge)  # the common case: the whole edge matches (one C compare)
        c = common_prefix_len(edge, toks, pos, end)
        return c - c % self.page_size

    def _own_slots(self, slots: torch.Tensor, copy: bool) -> torch.Tensor:
        """`slots` as int64 on the pool device for a node to keep: a private copy when
        `copy` (the caller may reuse its tensor), else `slots` itself where it can be."""
        if slots.dtype == torch.int64 and slots.device == self.pool.device:
            return slots.clone() if copy else slots  # without `to`'s argument parsing
        return slots.to(self.pool.device, torch.int64, copy=True)

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
        upper.hits = node.hits  # every reuse of the whole edge passed through its upper part
        parent.children[self._child_key(parent, node.extra_key, node.key, 0)] = upper
        node.key, node.value, node.parent = node.key[at:], node.value[at:], upper
        upper.children[self._child_key(upper, node.extra_key, node.key, 0)] = node
        return upper

    def _add_leaf(
        self,
        parent: TreeNode,
        ckey: Hashable,
        key: tuple[int, ...],
        value: torch.Tensor,
        extra_key: Hashable | None,
        tick: int,
    ) -> TreeNode:
        leaf = TreeNode(parent, key, value, extra_key, tick)
        self._leaves.discard(parent)  # no longer childless
        parent.children[ckey] = leaf
        self._add_candidate(leaf)
        self._evictable += len(key)
        if self.tier is not None:
            self.tier.keep(leaf)  # write-through: the tier queues a copy at once
        if self.events is not None:
            self.events.stored(leaf)
        return leaf

    def _remove_leaf(self, node: TreeNode) -> TreeNode:
        """Unlink an unlocked leaf (its slots are the caller's to free); return its parent."""
        parent = node.parent
        assert parent is not None and not node.children and node.lock_ref == 0
        del parent.children[self._child_key(parent, node.extra_key, node.key, 0)]
        self._leaves.discard(node)
        self._evictable -= len(node.key)
        if self.events is not None:
            self.events.removed(node)  # `node.parent` is still set: its path is known
        if parent is not self.root and not parent.children and parent.lock_ref == 0:
            self._add_candidate(parent)
        return parent

    def _add_candidate(self, node: TreeNode) -> None:
        """`node` just became an unlocked leaf: record it for eviction."""
        self._leaves.add(node)
        heapq.heappush(self._heap, (node.last_access, node.id, node))
        if len(self._heap) > 2 * len(self._leaves) + 1024:  # too many stale entries
            self._heap = [(n.last_access, n.id, n) for n in self._leaves]
            heapq.heapify(self._heap)

    def _touched(self, node: TreeNode) -> None:
        """`node`'s access time changed: give an eviction candidate a fresh heap entry.

        Only the last node of a path can be a leaf, so callers pass just that one.
        """
        if node in self._leaves:
            heapq.heappush(self._heap, (node.last_access, node.id, node))

    def _nodes(self) -> list[TreeNode]:
        """Every non-root node (iterative pre-order)."""
        out, stack = [], list(self.root.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out
