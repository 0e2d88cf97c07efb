"""A bounded, JSON-ready picture of the radix tree for the live cache view (`/cache`).

`tree_snapshot` walks the tree once (O(nodes)) and returns at most
`limits.max_nodes` drawn tree nodes, chosen largest subtree first, so the
response stays small whatever the tree holds. What is left out is folded into
one "merged" entry per parent that carries the left-out subtrees' token and node
counts, so the drawn tokens always add up to the tree's. Children smaller than
`limits.min_share` of the tree fold the same way (they would be too thin to see).

The nodes come as a flat list in parent-before-child order, each naming its
parent. Three kinds:
- "tenant": one per cache namespace (the root's children are keyed by namespace),
  labelled by a hash, never by the salt;
- "node": one real tree node (one edge): its `tokens`, subtree `size`, `hits`,
  `last_access` tick, seconds since use (`age_s`, an upper bound), `locked`, and
  the first `LABEL_TOKENS` token ids of the edge for the caller to decode;
- "merged": the left-out children of one parent (`merged` = how many tree nodes).

Run it on the engine loop thread (the only one that touches the tree).
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from typing import Any

from radixlm.kvcache.activity import LABEL_TOKENS, CacheUsage, EvictionLog, namespace_label
from radixlm.kvcache.prefix_cache import PrefixCache, TreeNode

MAX_NODES_CAP = 5000  # the most nodes any snapshot may draw


@dataclass(frozen=True)
class SnapshotLimits:
    """How much of the tree one snapshot carries; validated on construction."""

    max_nodes: int = 400  # real tree nodes drawn; the rest are merged
    min_share: float = 0.001  # a subtree under this share of the tree's tokens is merged

    def __post_init__(self) -> None:
        if not 1 <= self.max_nodes <= MAX_NODES_CAP:
            raise ValueError(f"max_nodes: must be in [1, {MAX_NODES_CAP}]")
        if not 0.0 <= self.min_share < 1.0:
            raise ValueError("min_share: must be in [0, 1)")


def subtree_sizes(root: TreeNode) -> tuple[dict[int, int], dict[int, int]]:
    """Tokens and node counts of every subtree below `root`, keyed by node id (iterative)."""
    order, stack = [], list(root.children.values())
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children.values())
    tokens: dict[int, int] = {}
    nodes: dict[int, int] = {}
    for node in reversed(order):  # children before parents
        kids = node.children.values()
        tokens[node.id] = len(node) + sum(tokens[c.id] for c in kids)
        nodes[node.id] = 1 + sum(nodes[c.id] for c in kids)
    return tokens, nodes


def tree_snapshot(
    cache: PrefixCache,
    usage: CacheUsage | None = None,
    limits: SnapshotLimits | None = None,
) -> dict[str, Any]:
    """The tree as bounded JSON-ready data (see the module docstring), plus its totals,
    per-namespace usage and recent evictions. Safe only on the thread that owns `cache`."""
    limits = limits or SnapshotLimits()
    tokens, counts = subtree_sizes(cache.root)
    total = sum(tokens[c.id] for c in cache.root.children.values())
    now, clock = time.time(), getattr(cache, "clock", 0)
    out: list[dict[str, Any]] = [{"id": "root", "parent": None, "kind": "root", "size": total}]
    tenants: dict[str, dict[str, Any]] = {}
    heap: list[tuple[int, int, TreeNode, str]] = []  # (-subtree tokens, id, node, parent id)
    for child in cache.root.children.values():
        label = namespace_label(child.extra_key)
        t = tenants.get(label)
        if t is None:
            t = tenants[label] = {"id": f"t:{label}", "parent": "root", "kind": "tenant",
                                  "tenant": label, "size": 0, "tree_nodes": 0}  # fmt: skip
            out.append(t)
        t["size"] += tokens[child.id]
        t["tree_nodes"] += counts[child.id]
        heapq.heappush(heap, (-tokens[child.id], child.id, child, t["id"]))
    merged: dict[str, dict[str, Any]] = {}
    drawn = 0
    floor = limits.min_share * total
    while heap:
        neg, _, node, parent = heapq.heappop(heap)
        if drawn >= limits.max_nodes or -neg < floor:
            _merge(merged, out, parent, node, tokens[node.id], counts[node.id])
            continue
        drawn += 1
        out.append(_node_entry(node, parent, tokens[node.id], now, usage))
        for child in node.children.values():
            heapq.heappush(heap, (-tokens[child.id], child.id, child, str(node.id)))
    evictions = getattr(cache, "evictions", None)
    return {
        "time": now,
        "clock": clock,
        "tree_nodes": sum(counts[c.id] for c in cache.root.children.values()),
        "tree_tokens": total,
        "drawn_nodes": drawn,
        "merged_nodes": sum(m["merged"] for m in merged.values()),
        "limits": {"max_nodes": limits.max_nodes, "min_share": limits.min_share},
        "nodes": out,
        "namespaces": _namespaces(tenants, usage),
        "evictions": _evictions(evictions),
    }


def _node_entry(
    node: TreeNode, parent: str, size: int, now: float, usage: CacheUsage | None
) -> dict[str, Any]:
    used = usage.time_of(node.last_access) if usage is not None else None
    return {
        "id": str(node.id),
        "parent": parent,
        "kind": "node",
        "tokens": len(node),
        "size": size,
        "hits": node.hits,
        "last_access": node.last_access,
        "age_s": None if used is None else round(now - used, 3),
        "locked": node.lock_ref > 0,
        "tenant": namespace_label(node.extra_key),
        "label_ids": list(node.key[:LABEL_TOKENS]),
    }


def _merge(
    merged: dict[str, dict[str, Any]], out: list[dict[str, Any]], parent: str,
    node: TreeNode, size: int, count: int,
) -> None:
    """Fold `node`'s subtree into `parent`'s merged entry (created on first use)."""
    m = merged.get(parent)
    if m is None:
        m = merged[parent] = {"id": f"m:{parent}", "parent": parent, "kind": "merged",
                              "size": 0, "tokens": 0, "merged": 0, "hits": 0,
                              "last_access": 0}  # fmt: skip
        out.append(m)
    m["size"] += size
    m["tokens"] += size
    m["merged"] += count
    m["hits"] = max(m["hits"], node.hits)
    m["last_access"] = max(m["last_access"], node.last_access)


def _namespaces(
    tenants: dict[str, dict[str, Any]], usage: CacheUsage | None
) -> list[dict[str, Any]]:
    """One row per namespace seen in the tree or in the counters, largest first."""
    rows: dict[str, dict[str, Any]] = {}
    for label, t in tenants.items():
        rows[label] = {"namespace": label, "tree_tokens": t["size"], "tree_nodes": t["tree_nodes"],
                       "requests": 0, "prompt_tokens": 0, "cached_tokens": 0}  # fmt: skip
    for label, u in (usage.namespaces.items() if usage is not None else ()):
        row = rows.setdefault(label, {"namespace": label, "tree_tokens": 0, "tree_nodes": 0})
        row.update(requests=u.requests, prompt_tokens=u.prompt_tokens,
                   cached_tokens=u.cached_tokens)  # fmt: skip
    return sorted(rows.values(), key=lambda r: (-r["tree_tokens"], -r["requests"]))


def _evictions(log: EvictionLog | None) -> dict[str, Any]:
    if log is None:
        return {"total_nodes": 0, "total_tokens": 0, "recent": []}
    recent = [{"time": e.time, "namespace": e.namespace, "tokens": e.tokens,
               "hits": e.hits, "label_ids": list(e.label_ids)} for e in reversed(log.recent)]
    return {"total_nodes": log.total_nodes, "total_tokens": log.total_tokens, "recent": recent}
