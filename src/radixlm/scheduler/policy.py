"""Order the waiting queue: fcfs, lpm, dfs-weight, lof, random.

Cache-aware policies (lpm, dfs-weight) match every waiting request against the
tree, which costs a tree walk per request; past `fcfs_fallback_queue_len`
waiting requests they fall back to fcfs.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable

from radixlm.config import SchedulePolicyName
from radixlm.kvcache.prefix_cache import MatchResult, TreeNode
from radixlm.scheduler.request import Req


class SchedulePolicy:
    def __init__(
        self,
        name: SchedulePolicyName | str,
        match: Callable[[Req], MatchResult],
        root: TreeNode | None,
        fcfs_fallback_queue_len: int = 128,
        seed: int = 0,
    ) -> None:
        """`match(req)` is the request's cached prefix now; `root` is the tree's root."""
        self.name = SchedulePolicyName(name).value  # ValueError for an unknown name
        self.match = match
        self.root = root
        self.fallback_len = fcfs_fallback_queue_len
        self.rng = random.Random(seed)

    def order(self, waiting: list[Req], chunk_first: bool = False) -> list[Req]:
        """Return the waiting requests in the order admission should try them.

        `chunk_first`: a chunked prefill extends before admission. A lone request
        is returned as it is (admission matches it anyway) unless a chunk goes first:
        the chunk's allocation may evict, and the match here refreshes its path before.
        """
        if len(waiting) < 2 and not chunk_first:
            return list(waiting)
        name = self.name
        if name in ("lpm", "dfs-weight") and (
            len(waiting) > self.fallback_len or self.root is None
        ):
            name = "fcfs"
        if name == "fcfs":
            return list(waiting)
        if name == "lof":
            return sorted(waiting, key=lambda r: -r.remaining_new_tokens())
        if name == "random":
            shuffled = list(waiting)
            self.rng.shuffle(shuffled)
            return shuffled
        matches = {id(r): self.match(r) for r in waiting}
        if name == "lpm":
            # Stable sort: equal matches keep arrival order.
            return sorted(waiting, key=lambda r: -matches[id(r)].prefix_len)
        return self._dfs_weight(waiting, {i: m.last_node for i, m in matches.items()})

    def _dfs_weight(self, waiting: list[Req], node_of: dict[int, TreeNode]) -> list[Req]:
        """Depth-first over the tree, heavier subtrees (more waiting requests) first.

        A request sits at the node where its match ended (`node_of[id(req)]`). A
        node's subtrees come before the node's own requests (deeper matches first);
        requests at one node keep arrival order.
        """
        at_node: dict[int, list[Req]] = defaultdict(list)
        weight: dict[int, int] = defaultdict(int)
        for req in waiting:
            node: TreeNode | None = node_of[id(req)]
            assert node is not None
            at_node[node.id].append(req)
            while node is not None:  # every ancestor's subtree gains one request
                weight[node.id] += 1
                node = node.parent
        assert self.root is not None
        out: list[Req] = []
        stack: list[tuple[TreeNode, bool]] = [(self.root, False)]
        while stack:  # iterative post-order: trees can be deeper than the recursion limit
            node, expanded = stack.pop()
            if expanded:
                out.extend(at_node.get(node.id, ()))
                continue
            stack.append((node, True))
            kids = [c for c in node.children.values() if weight.get(c.id)]
            kids.sort(key=lambda c: weight[c.id])  # lightest pushed first, heaviest popped first
            stack.extend((c, False) for c in kids)
        return out
