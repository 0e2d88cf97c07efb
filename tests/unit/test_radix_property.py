"""Property test: random request traffic against a naive model of the radix cache.

The model is a dict from (namespace, page-aligned token prefix) to the slots
of the prefix's last page, for every cached prefix. Requests follow the caller
protocol (match, lock, alloc, insert, free duplicates and tail, unlock); bare
lock/unlock, match, evict and reset are mixed in. After every step: the tree
holds exactly the model's prefixes with the model's slots, `check_integrity`
passes with the live requests' own slots as held, every lock_ref equals the
number of live locks at or below the node, and every locked prefix is still
cached with its slots (eviction never takes a locked token); each eviction
takes exactly the nodes that a from-scratch least-recently-used scan would.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import hypothesis.strategies as st
import torch
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from radixlm.kvcache.pool import KVPool, PoolShape
from radixlm.kvcache.prefix_cache import TreeNode
from radixlm.kvcache.radix_cache import RadixCache

SHAPE = PoolShape(num_layers=1, num_kv_heads=1, head_dim=1, dtype=torch.float32)
POOL_SLOTS = 48
keys = st.lists(st.integers(0, 2), min_size=0, max_size=10)  # small alphabet: prefixes collide
namespaces = st.sampled_from([None, "salt"])
Prefix = tuple[object, tuple[int, ...]]


@dataclass
class Lock:
    node: TreeNode
    ns: object
    key: tuple[int, ...]  # the locked prefix
    slots: list[int]


@dataclass
class Request:
    lock: Lock
    key: tuple[int, ...]
    slots: torch.Tensor  # the whole key's slots: locked prefix, then its own allocation


class RadixMachine(RuleBasedStateMachine):
    page_size = 1

    def __init__(self) -> None:
        super().__init__()
        self.pool = KVPool(SHAPE, POOL_SLOTS, page_size=self.page_size, debug=True)
        self.cache = RadixCache(self.pool)
        self.model: dict[Prefix, tuple[int, ...]] = {}
        self.locks: list[Lock] = []
        self.requests: list[Request] = []

    # -- the model -------------------------------------------------------------

    def model_match(self, ns: object, key: tuple[int, ...]) -> list[int]:
        slots: list[int] = []
        for end in range(self.page_size, self.cache.page_aligned_len(len(key)) + 1, self.page_size):
            page = self.model.get((ns, key[:end]))
            if page is None:
                break
            slots += page
        return slots

    def tree_contents(self) -> dict[Prefix, tuple[int, ...]]:
        """(namespace, page-aligned prefix) -> slots of the prefix's last page, from the tree."""
        ps, out = self.page_size, {}
        stack = [(child, ()) for child in self.cache.root.children.values()]
        while stack:
            node, path = stack.pop()
            toks, slots = list(node.key), node.value.tolist()
            for i in range(0, len(toks), ps):
                path = (*path, *toks[i : i + ps])
                out[(node.extra_key, path)] = tuple(slots[i : i + ps])
            stack.extend((c, path) for c in node.children.values())
        return out

    def match_and_check(self, key: tuple[int, ...], ns: object) -> Lock:
        expected = self.model_match(ns, key)
        m = self.cache.match_prefix(list(key), ns)
        assert m.slot_indices.tolist() == expected
        return Lock(m.last_node, ns, key[: m.prefix_len], expected)

    # -- rules -----------------------------------------------------------------

    @rule(key=keys, ns=namespaces)
    def match(self, key, ns):
        self.match_and_check(tuple(key), ns)

    @rule(key=keys, ns=namespaces)
    def lock(self, key, ns):
        lock = self.match_and_check(tuple(key), ns)
        self.cache.inc_lock_ref(lock.node)
        self.locks.append(lock)

    @precondition(lambda self: self.locks)
    @rule(data=st.data())
    def unlock(self, data):
        lock = self.locks.pop(data.draw(st.integers(0, len(self.locks) - 1)))
        self.cache.dec_lock_ref(lock.node)

    @rule(key=keys.filter(bool), ns=namespaces)
    def start_request(self, key, ns):
        key = tuple(key)
        lock = self.match_and_check(key, ns)
        self.cache.inc_lock_ref(lock.node)
        need = len(key) - len(lock.slots)
        new = self.pool.alloc(need)
        if new is None:
            self.evict(self.pool.pages_for(need) * self.page_size - self.pool.available_size())
            new = self.pool.alloc(need)
        if new is None:  # does not fit even after eviction: the request is refused
            self.cache.dec_lock_ref(lock.node)
            return
        slots = torch.cat([torch.tensor(lock.slots, dtype=torch.int64), new])
        self.requests.append(Request(lock, key, slots))

    @precondition(lambda self: self.requests)
    @rule(data=st.data(), below=st.booleans())
    def finish_request(self, data, below):
        """Insert the whole key, or (`below`) only the part after the locked node."""
        req = self.requests.pop(data.draw(st.integers(0, len(self.requests) - 1)))
        ns, key = req.lock.ns, req.key
        expected = self.model_match(ns, key)
        already, p = len(expected), len(req.lock.slots)
        if below:
            done = self.cache.insert_below(req.lock.node, key[p:], req.slots[p:], ns)
            n = p + done.cached.numel()
            assert done.cached.tolist() == expected[p:]
            self.check_path(done.last_node, ns, key[: self.cache.page_aligned_len(len(key))])
        else:
            n = self.cache.insert(list(key), req.slots, ns)
        assert n == already >= p
        aligned = self.cache.page_aligned_len(len(key))
        for end in range(n + self.page_size, aligned + 1, self.page_size):
            self.model[(ns, key[:end])] = tuple(req.slots[end - self.page_size : end].tolist())
        self.pool.free(req.slots[len(req.lock.slots) : n])  # duplicates
        self.pool.free(req.slots[aligned:])  # the partial page the tree did not take
        self.cache.dec_lock_ref(req.lock.node)

    def check_path(self, node: TreeNode, ns: object, key: tuple[int, ...]) -> None:
        """`node`'s path spells `key` in namespace `ns`, every node on it just accessed."""
        toks: list[int] = []
        while node is not self.cache.root:
            assert node.extra_key == ns and node.last_access == self.cache.clock
            toks[:0] = node.key
            node = node.parent
        assert tuple(toks) == key

    def all_nodes(self) -> list[TreeNode]:
        out, stack = [], list(self.cache.root.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    def lru_victims(self, num_tokens: int) -> set[int]:
        """Ids of the nodes a from-scratch LRU eviction would take (scan + heap)."""
        nodes, root = self.all_nodes(), self.cache.root
        kids = {n.id: len(n.children) for n in nodes}
        heap = [(n.last_access, n.id, n) for n in nodes if not n.children and not n.lock_ref]
        heapq.heapify(heap)
        freed, victims = 0, set()
        while freed < num_tokens and heap:
            _, _, node = heapq.heappop(heap)
            victims.add(node.id)
            freed += len(node)
            parent = node.parent
            if parent is not root:
                kids[parent.id] -= 1
                if kids[parent.id] == 0 and not parent.lock_ref:
                    heapq.heappush(heap, (parent.last_access, parent.id, parent))
        return victims

    @rule(key=keys.filter(bool), ns=namespaces)
    def insert_unlocked(self, key, ns):
        """A request that computed its whole key without matching, then caches it."""
        key = tuple(key)
        slots = self.pool.alloc(len(key))
        if slots is None:
            return
        already = len(self.model_match(ns, key))
        n = self.cache.insert(list(key), slots, ns)
        assert n == already
        aligned = self.cache.page_aligned_len(len(key))
        for end in range(n + self.page_size, aligned + 1, self.page_size):
            self.model[(ns, key[:end])] = tuple(slots[end - self.page_size : end].tolist())
        self.pool.free(slots[:n])
        self.pool.free(slots[aligned:])

    @rule(num_tokens=st.one_of(st.integers(1, 4), st.integers(0, 24)))
    def evict(self, num_tokens: int) -> None:
        before_size, before_free = self.cache.total_size, self.pool.available_size()
        evictable = self.cache.evictable_size
        before_ids = {n.id for n in self.all_nodes()}
        victims = self.lru_victims(num_tokens)
        freed = self.cache.evict(num_tokens)
        assert before_ids - {n.id for n in self.all_nodes()} == victims  # LRU order
        assert self.cache.total_size == before_size - freed
        assert self.pool.available_size() == before_free + freed
        assert freed >= min(num_tokens, evictable)
        if freed < num_tokens:
            assert self.cache.evictable_size == 0
        after = self.tree_contents()
        assert after.items() <= self.model.items()
        self.model = after

    @rule()
    def reset(self):
        if self.cache.protected_size:
            try:
                self.cache.reset()
            except RuntimeError:
                return
            raise AssertionError("reset succeeded while nodes were locked")
        # Nothing is protected, so every live lock sits on the root, which survives.
        assert all(lock.node is self.cache.root for lock in self.locks)
        self.cache.reset()
        self.model = {}

    # -- invariants ------------------------------------------------------------

    @invariant()
    def tree_equals_model(self):
        assert self.tree_contents() == self.model

    @invariant()
    def integrity(self):
        own = [r.slots[len(r.lock.slots) :] for r in self.requests]
        self.cache.check_integrity(held_by_requests=own)

    @invariant()
    def lock_refs_count_live_locks(self):
        counts: dict[int, int] = {}
        for lock in [*self.locks, *(r.lock for r in self.requests)]:
            node = lock.node
            while node.parent is not None:
                counts[node.id] = counts.get(node.id, 0) + 1
                node = node.parent
        stack = list(self.cache.root.children.values())
        while stack:
            node = stack.pop()
            assert node.lock_ref == counts.pop(node.id, 0)
            stack.extend(node.children.values())
        assert not counts, "a live lock points at a node that left the tree"

    @invariant()
    def locked_prefixes_stay_cached(self):
        for lock in [*self.locks, *(r.lock for r in self.requests)]:
            got = self.cache.match_prefix(list(lock.key), lock.ns, record=False)
            assert got.slot_indices.tolist() == lock.slots


class PagedRadixMachine(RadixMachine):
    page_size = 2


SETTINGS = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestRadixCacheProperties = RadixMachine.TestCase
TestRadixCacheProperties.settings = SETTINGS
TestPagedRadixCacheProperties = PagedRadixMachine.TestCase
TestPagedRadixCacheProperties.settings = SETTINGS
