"""The doctor's diagnosis of a trace: hit rates, divergence, dynamic content, order,
capacity, tenants, and advice whose numbers come from replaying the rewritten trace.

`diagnose(trace, tokenizer)` returns the report as a JSON-ready dict (the form
`--json` prints and the text and HTML renderings read). Without a tokenizer (or
on a hashed trace) everything is computed on units and no text is shown.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from radixlm.doctor.capacity import reuse_distances
from radixlm.doctor.order import OrderAnalysis, analyze_order
from radixlm.doctor.replay import ReplayResult, replay, scheduler_config
from radixlm.doctor.rewrite import move_spans, reorder_parts
from radixlm.doctor.spans import Prompt, SpanAnalysis, analyze_spans
from radixlm.doctor.units import ReplayRequest, to_requests
from radixlm.trace.reader import Trace

POLICIES = ("lpm", "fcfs", "dfs-weight")
CURVE = (0.25, 0.5, 1, 2, 4, 8)  # replayed pool sizes, as multiples of the server's
MIN_GAIN = 0.02  # advice must gain at least this much hit rate


@dataclass(frozen=True)
class DoctorOptions:
    """What to diagnose against: pool size and policy (default: the server's, from the
    trace header), and how many of the newest prompts the text analyses look at."""

    pool_tokens: int | None = None
    policy: str | None = None
    sample: int = 2000

    def __post_init__(self) -> None:
        if self.pool_tokens is not None and self.pool_tokens < 16:
            raise ValueError("pool_tokens: must be at least 16")
        if self.sample < 2:
            raise ValueError("sample: must be at least 2")


class Doctor:
    """One diagnosis: holds the trace's requests and runs the replays it needs."""

    def __init__(self, trace: Trace, tokenizer: Any | None, options: DoctorOptions) -> None:
        h = trace.header
        self.trace, self.options = trace, options
        self.tokenizer = None if trace.hashed else tokenizer
        self.unit = h.page_size if trace.hashed else 1
        self.pool = options.pool_tokens or h.max_total_tokens
        self.policy = options.policy or str(h.scheduler.get("schedule_policy", "lpm"))
        self.requests = to_requests(trace.records, self.unit)

    def run(self, requests: Sequence[ReplayRequest], pool: int | None = None,
            policy: str | None = None) -> ReplayResult:  # fmt: skip
        cfg = scheduler_config(self.trace.header.scheduler, policy or self.policy)
        return replay(requests, pool or self.pool, cfg, self.trace.header.context_length,
                      self.unit)  # fmt: skip

    def report(self) -> dict[str, Any]:
        """The whole diagnosis (see the module docstring)."""
        reqs = self.requests
        base = self.run(reqs)
        sample = reqs[-self.options.sample :]
        prompts = [Prompt(r.index, r.tenant, r.key) for r in sample]
        spans = analyze_spans(prompts, self.tokenizer)
        order = analyze_order(prompts, self.tokenizer)
        at_pool = {p: self.run(reqs, policy=p).hit_rate for p in POLICIES}
        best_policy = max(at_pool, key=lambda p: at_pool[p])
        curve = [(int(self.pool * f), self.run(reqs, pool=max(int(self.pool * f), 16)).hit_rate)
                 for f in CURVE]  # fmt: skip
        reuse = reuse_distances(reqs, self.unit)
        return {
            "trace": self._summary(),
            "hit_rates": {"measured": self.measured(), "oracle": reuse.oracle,
                          "replay": base.hit_rate, "at_pool": at_pool,
                          "best_at_pool": at_pool[best_policy], "best_policy": best_policy},
            "divergence": [g.to_dict() for g in spans.groups if g.ordinal == 1],
            "dynamic": [g.to_dict() for g in spans.groups],
            "order": _order_dict(order),
            "capacity": {"pool_tokens": self.pool, "reuse": reuse.to_dict(self.pool),
                         "curve": [{"cache_tokens": n, "hit_rate": r} for n, r in curve],
                         "distances": _quantiles([d for d, _ in reuse.distances])},
            "tenants": self._tenants(base),
            "evictions": [{"by": a, "victim": v, "tokens": n * self.unit}
                          for (a, v), n in sorted(base.evicted.items(), key=lambda t: -t[1])],
            "advice": self._advice(base, spans, order, curve),
        }  # fmt: skip

    def measured(self) -> float:
        recs = [r for r in self.trace.records if r.admitted]
        total = sum(r.prompt_len for r in recs)
        return sum(r.cached for r in recs) / total if total else 0.0

    def _summary(self) -> dict[str, Any]:
        h = self.trace.header
        return {"requests": len(self.trace.records), "replayed": len(self.requests),
                "prompt_tokens": sum(r.prompt_len for r in self.trace.records),
                "hashed": h.hashed, "page_size": self.unit, "model": h.model,
                "pool_tokens": self.pool, "server_pool_tokens": h.max_total_tokens,
                "policy": self.policy, "bad_lines": self.trace.bad_lines,
                "text": self.tokenizer is not None}  # fmt: skip

    def _tenants(self, base: ReplayResult) -> list[dict[str, Any]]:
        rows: dict[Any, dict[str, Any]] = defaultdict(lambda: {
            "requests": 0, "prompt_tokens": 0, "cached": 0, "replay_cached": 0,
            "evicted_by_others": 0, "evicted_others": 0})  # fmt: skip
        for rr in self.requests:
            row = rows[rr.tenant]
            row["requests"] += 1
            row["prompt_tokens"] += rr.prompt_tokens
            row["replay_cached"] += base.cached[rr.index]
            row["cached"] += self.trace.records[rr.index].cached
        for (actor, victim), n in base.evicted.items():
            if actor is not None and actor != victim:
                rows[victim]["evicted_by_others"] += n * self.unit
                rows[actor]["evicted_others"] += n * self.unit
        out = []
        for tenant, row in rows.items():
            p = row["prompt_tokens"] or 1
            out.append({"tenant": tenant, **row, "measured": row["cached"] / p,
                        "replay": row["replay_cached"] / p})  # fmt: skip
        return sorted(out, key=lambda r: -r["prompt_tokens"])

    def _advice(self, base: ReplayResult, spans: SpanAnalysis, order: OrderAnalysis,
                curve: list[tuple[int, float]]) -> list[dict[str, Any]]:  # fmt: skip
        before = base.hit_rate
        advice, rewritten = [], self.requests
        if spans.groups and spans.ranges:
            moved = move_spans(self.requests, spans.ranges)
            after = self.run(moved).hit_rate
            if after - before >= MIN_GAIN:
                advice.append(_span_advice(spans, before, after))
                rewritten = moved
        if order.swapped:
            fixed = reorder_parts(self.requests, order)
            after = self.run(fixed).hit_rate
            if after - before >= MIN_GAIN:
                ids = order.canonical_order
                advice.append({"kind": "order", "before": before, "after": after,
                               "order": ids, "text": _order_text(order, before, after)})
                rewritten = reorder_parts(rewritten, order) if rewritten is not self.requests \
                    else fixed  # fmt: skip
        if len(advice) > 1:
            after = self.run(rewritten).hit_rate
            advice.append({"kind": "all", "before": before, "after": after,
                           "text": f"do all of the above: hit rate {_pct(before)} -> "
                                   f"{_pct(after)} on this trace"})  # fmt: skip
        bigger = [(n, r) for n, r in curve if n > self.pool]  # a smaller pool only serializes
        best = max((r for _, r in bigger), default=0.0)
        if best - before >= MIN_GAIN:
            n = min(n for n, r in bigger if r >= best - 0.01)
            advice.append({"kind": "capacity", "before": before, "after": dict(curve)[n],
                           "cache_tokens": n,
                           "text": f"give the cache {n} tokens (--max-total-tokens {n}, now "
                                   f"{self.pool}): hit rate {_pct(before)} -> "
                                   f"{_pct(dict(curve)[n])} on this trace"})  # fmt: skip
        return advice


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _span_advice(spans: SpanAnalysis, before: float, after: float) -> dict[str, Any]:
    top = sorted(spans.groups[:4], key=lambda g: g.position)
    what = " and ".join(f"the span at position {g.position} (looks like {_a(g.kind)})"
                        for g in top)  # fmt: skip
    text = (f"move {what} after the shared part: hit rate {_pct(before)} -> {_pct(after)} "
            "on this trace")
    return {"kind": "dynamic", "before": before, "after": after, "text": text,
            "positions": sorted(g.position for g in spans.groups)}  # fmt: skip


def _a(kind: str) -> str:
    return {"id": "an id", "unknown": "per-request content", "text": "changing text"}.get(
        kind, f"a {kind}")


def _order_text(order: OrderAnalysis, before: float, after: float) -> str:
    names = [f"part {order.parts[i].rank + 1}" for i in order.canonical_order]
    return (f"put the shared parts in one fixed order ({', '.join(names)}; "
            f"{order.scrambled_prompts} prompts have them in another order): "
            f"hit rate {_pct(before)} -> {_pct(after)} on this trace")  # fmt: skip


def _order_dict(order: OrderAnalysis) -> dict[str, Any]:
    rank = {i: p.rank + 1 for i, p in order.parts.items()}
    return {"parts": [{**order.parts[i].to_dict(), "name": f"part {rank[i]}"}
                      for i in order.canonical_order],
            "swapped": [{"a": f"part {rank[x]}", "b": f"part {rank[y]}", "a_first": n,
                         "b_first": m} for x, y, n, m in order.swapped],
            "scrambled_prompts": order.scrambled_prompts,
            "canonical_order": [f"part {rank[i]}" for i in order.canonical_order]}  # fmt: skip


def _quantiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    v = sorted(values)
    return {f"p{q}": v[min(len(v) - 1, int(q / 100 * len(v)))] for q in (50, 90, 99)}


def diagnose(trace: Trace, tokenizer: Any | None = None,
             options: DoctorOptions | None = None) -> dict[str, Any]:  # fmt: skip
    """The doctor's report on `trace` (see the module docstring)."""
    return Doctor(trace, tokenizer, options or DoctorOptions()).report()
