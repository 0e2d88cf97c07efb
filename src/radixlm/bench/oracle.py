"""The oracle hit rate: the share of prompt tokens any cache could have reused.

A cache with unlimited memory can serve, of each prompt as it arrives, the longest
prefix it shares with any token sequence computed before: the earlier prompts, and the
prompts plus answers of requests that had finished by then (the KV of an answer's last
token is never computed, so it is left out). It can never serve a prompt's last token:
one token is always computed, so there are logits to sample from.
"""

from __future__ import annotations

from collections.abc import Sequence


class OracleCache:
    """Every token sequence seen so far, in a trie (one dict per node)."""

    def __init__(self) -> None:
        self.root: dict[int, dict] = {}

    def match(self, ids: Sequence[int]) -> int:
        """How many tokens of `ids` a cache holding every inserted sequence could serve."""
        node, depth = self.root, 0
        while depth < len(ids) and ids[depth] in node:
            node = node[ids[depth]]
            depth += 1
        return max(0, min(depth, len(ids) - 1))

    def insert(self, ids: Sequence[int]) -> None:
        node = self.root
        for tok in ids:
            node = node.setdefault(tok, {})


def reusable_tokens(prompts: Sequence[Sequence[int]]) -> list[int]:
    """For each prompt, in arrival order, how many of its tokens the earlier ones could serve."""
    cache = OracleCache()
    out = []
    for ids in prompts:
        out.append(cache.match(ids))
        cache.insert(ids)
    return out


def oracle_hit_rate(prompts: Sequence[Sequence[int]]) -> float:
    """Reusable prompt tokens over all prompt tokens, prompts in arrival order (0.0 if none)."""
    total = sum(len(p) for p in prompts)
    return sum(reusable_tokens(prompts)) / total if total else 0.0


def replay(events: Sequence[tuple[str, int, Sequence[int]]]) -> dict[int, int]:
    """Reusable tokens of each request's prompt, by index, from a run's event log.

    `("send", i, prompt_ids)` is request i arriving; `("done", i, computed_ids)` is its
    prompt and answer (without the answer's last token) becoming available to the cache.
    """
    cache = OracleCache()
    out: dict[int, int] = {}
    for kind, index, ids in events:
        if kind == "send":
            out[index] = cache.match(ids)
        cache.insert(ids)
    return out
