"""The best cache hit rate any prefix cache could reach on a set of prompts."""

from __future__ import annotations

from collections.abc import Iterable


def oracle_cached_tokens(prompts: Iterable[list[int]]) -> int:
    """Prompt tokens a perfect cache serves: every token after the first time its whole
    prefix was seen (each distinct prefix is computed once, by whichever prompt is first)."""
    root: dict[int, dict] = {}
    cached = 0
    for ids in prompts:
        node = root
        for token in ids:
            if token in node:
                cached += 1
            else:
                node[token] = {}
            node = node[token]
    return cached
