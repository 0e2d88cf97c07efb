"""Divergence points and dynamic content: where mostly identical prompts first differ, and
the spans (times, dates, ids, counters, names) that make them differ.

Each prompt is aligned (`align.diff_spans`) against its partner: the prompt of the
same tenant sharing the longest prefix with it (a neighbour in sorted order). A
differing span followed by identical content is dynamic content inside a template;
spans are grouped across prompts by their order and the template text just before
them, and each group gets its kind (`classify`), its template position (median token
position), how many requests it hits and how many tokens it costs (identical tokens
after it that a cache could not reuse).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from radixlm.doctor.align import diff_spans
from radixlm.doctor.classify import classify, looks_like_counter
from radixlm.kvcache.radix_cache import common_prefix_len

LEFT = 6  # template units before a span that identify its group
LEFT_CHARS = 8  # characters of template text before a span that identify its group
EXAMPLES = 3


@dataclass
class Prompt:
    """One prompt to analyse: its trace index, tenant and units (token ids or page hashes)."""

    index: int
    tenant: str | None
    units: list[int]


@dataclass
class SpanGroup:
    """Dynamic content at one template position (see the module docstring)."""

    ordinal: int  # 1 = the first difference of the prompts, 2 = the next one, ...
    kind: str
    position: int  # median start (units) in the prompts
    requests: int = 0
    tokens: int = 0  # identical tokens after the span, not reusable because of it
    before: str | None = None  # the template text just before the span
    examples: list[tuple[str, str]] = field(default_factory=list)  # (this prompt, its partner)
    values: list[str] = field(default_factory=list)  # in arrival order (classification)

    def to_dict(self) -> dict[str, Any]:
        return {"ordinal": self.ordinal, "kind": self.kind, "position": self.position,
                "requests": self.requests, "tokens": self.tokens, "before": self.before,
                "examples": [list(e) for e in self.examples]}  # fmt: skip


@dataclass
class SpanAnalysis:
    """The span groups (most costly first) and, per prompt index, its spans' unit ranges."""

    groups: list[SpanGroup]
    ranges: dict[int, list[tuple[int, int]]]  # prompt index -> [(lo, hi)] of its dynamic spans
    prompts: int


def partners(prompts: Sequence[Prompt]) -> dict[int, Prompt]:
    """For each prompt index, the other prompt of its tenant sharing the longest prefix."""
    by_tenant: dict[Any, list[Prompt]] = defaultdict(list)
    for p in prompts:
        by_tenant[p.tenant].append(p)
    out: dict[int, Prompt] = {}
    for group in by_tenant.values():
        group = sorted(group, key=lambda p: p.units)
        for k, p in enumerate(group):
            best, best_len = None, -1
            for q in (group[k - 1] if k else None, group[k + 1] if k + 1 < len(group) else None):
                if q is not None and (n := common_prefix_len(p.units, q.units)) > best_len:
                    best, best_len = q, n
            if best is not None:
                out[p.index] = best
    return out


def analyze_spans(prompts: Sequence[Prompt], tokenizer: Any | None) -> SpanAnalysis:
    """Group the dynamic spans of `prompts` (arrival order); text needs `tokenizer`."""
    groups: dict[tuple, SpanGroup] = {}
    starts: dict[tuple, list[int]] = defaultdict(list)
    spans_of: dict[int, list[tuple[tuple, int, int]]] = {}  # index -> [(group key, lo, hi)]
    pair = partners(prompts)
    for p in prompts:
        q = pair.get(p.index)
        if q is None:
            continue
        al = diff_spans(p.units, q.units)
        for k, (d, run) in enumerate(zip(al.spans, al.runs, strict=True)):
            if run == 0:
                break  # never back in step: the prompts simply go separate ways here
            kind, lo, hi, mine, theirs = _describe(tokenizer, p.units, q.units, d)
            key = (k + 1, kind, _left_key(tokenizer, p.units, lo))
            g = groups.get(key)
            if g is None:
                before = None if tokenizer is None else tokenizer.decode_raw(
                    p.units[max(0, lo - 3 * LEFT) : lo])  # fmt: skip
                g = groups[key] = SpanGroup(k + 1, kind, lo, before=before)
            g.requests += 1
            g.tokens += sum(al.runs[k:])
            starts[key].append(lo)
            if len(g.examples) < EXAMPLES and (mine, theirs) not in g.examples:
                g.examples.append((mine, theirs))
            g.values.append(mine)
            spans_of.setdefault(p.index, []).append((key, lo, hi))
    for key, g in groups.items():
        g.position = int(statistics.median(starts[key]))
        if g.kind == "number" and looks_like_counter(g.values):
            g.kind = "counter"
    kept = {key for key, g in groups.items() if g.requests >= 2 and g.tokens > 0}
    ranges = {i: [(lo, hi) for key, lo, hi in spans if key in kept]
              for i, spans in spans_of.items()}  # fmt: skip
    found = sorted((groups[k] for k in kept), key=lambda g: -g.tokens)
    return SpanAnalysis(found, {i: r for i, r in ranges.items() if r}, len(prompts))


def _left_key(tokenizer: Any | None, units: list[int], lo: int) -> Any:
    """What identifies a span's template position: the text (or units) just before it.

    Text is stripped and cut to its last few characters, so a space that one value's
    first token swallowed does not split a group.
    """
    if tokenizer is None:
        return tuple(units[max(0, lo - LEFT) : lo])
    return tokenizer.decode_raw(units[max(0, lo - 3 * LEFT) : lo]).strip()[-LEFT_CHARS:]


def _describe(tokenizer: Any | None, a: list[int], b: list[int], d: Any) -> tuple:
    """(kind, lo, hi, text in a, text in b) of one differing stretch (units of `a`)."""
    if tokenizer is None:  # page hashes: no text to look at
        return "unknown", d.a0, d.a1, f"{d.a1 - d.a0} units", f"{d.b1 - d.b0} units"
    sa = classify(tokenizer, a, d.a0, d.a1)
    sb = classify(tokenizer, b, d.b0, d.b1)
    kind = sa.kind if sa.kind != "text" else sb.kind
    return kind, sa.lo, sa.hi, sa.value, sb.value
