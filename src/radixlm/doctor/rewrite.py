"""Rewrite a trace as advised, so the advice's number comes from a replay, never a guess.

`move_spans` takes each prompt's dynamic spans out and puts them back after the
part it shares with its partner; `reorder_parts` puts each prompt's shared parts in
the canonical order. Both return new `ReplayRequest`s; prompt lengths stay the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from radixlm.doctor.order import OrderAnalysis, canonical
from radixlm.doctor.spans import Prompt, partners
from radixlm.doctor.units import ReplayRequest
from radixlm.kvcache.radix_cache import common_prefix_len


def _strip(units: list[int], ranges: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """(units without the ranges, the ranges' units in order)."""
    kept, moved, pos = [], [], 0
    for lo, hi in sorted(ranges):
        lo = max(lo, pos)
        kept.extend(units[pos:lo])
        moved.extend(units[lo:hi])
        pos = max(pos, hi)
    kept.extend(units[pos:])
    return kept, moved


def move_spans(requests: Sequence[ReplayRequest],
               ranges: dict[int, list[tuple[int, int]]]) -> list[ReplayRequest]:  # fmt: skip
    """`requests` with the spans `ranges[index]` moved after the prompt's shared part.

    The shared part of a prompt is its common prefix, spans removed, with the
    prompt (spans removed) of its tenant that shares the most with it.
    """
    stripped: dict[int, tuple[list[int], list[int]]] = {}
    for rr in requests:
        if rr.index in ranges:
            stripped[rr.index] = _strip(rr.key, ranges[rr.index])
    views = [Prompt(rr.index, rr.tenant, stripped[rr.index][0] if rr.index in stripped else rr.key)
             for rr in requests]  # fmt: skip
    pair = partners(views)
    out = []
    for rr in requests:
        if rr.index not in stripped:
            out.append(rr)
            continue
        kept, moved = stripped[rr.index]
        q = pair.get(rr.index)
        at = common_prefix_len(tuple(kept), tuple(q.units)) if q is not None else 0
        at = min(at, max(len(kept) - 1, 0))  # keep the prompt's last unit last
        key = kept[:at] + moved + kept[at:]
        out.append(dataclasses.replace(rr, key=key))
    return out


def reorder_parts(requests: Sequence[ReplayRequest], order: OrderAnalysis) -> list[ReplayRequest]:
    """`requests` with each prompt's shared parts in the canonical order."""
    out = []
    for rr in requests:
        runs = order.layout.get(rr.index)
        if runs:
            rr = dataclasses.replace(rr, key=canonical(rr.key, runs, order.parts))
        out.append(rr)
    return out
