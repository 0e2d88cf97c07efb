"""Order: the same long parts (documents, tool lists, examples) in different orders.

A part is a stretch of tokens that several prompts share wherever it stands. Every
`K`-unit window of every prompt gets a signature: the set of prompts that hold that
window. Inside a shared part all windows have the same signature; where a part ends
and the next begins the windows span the junction, which fewer prompts share. So a
prompt splits into runs of equal signature, and a run of at least `MIN_PART` units
held by two prompts or more is a part (identified by its first window).

Prompts holding the same parts in different orders share only what precedes the
first swapped part. `canonical` rewrites a prompt with its parts in one fixed order
(the most widely shared part first), leaving everything between the parts in place.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from radixlm.doctor.spans import Prompt

K = 16  # units per window
MIN_PART = 32  # the shortest part worth reporting (units)
HEAD = 32  # units of a part decoded as its label


@dataclass
class Part:
    """A shared part: its id, length, how many prompts hold it, and its opening text."""

    id: int
    length: int
    prompts: int
    head: str | None = None
    rank: int = 0  # its place in the canonical order

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "length": self.length, "prompts": self.prompts,
                "head": self.head, "rank": self.rank}  # fmt: skip


@dataclass
class OrderAnalysis:
    """The parts, each prompt's parts in order, and the pairs seen in both orders."""

    parts: dict[int, Part]
    layout: dict[int, list[tuple[int, int, int]]]  # prompt index -> [(part id, lo, hi)]
    swapped: list[tuple[int, int, int, int]] = field(default_factory=list)  # (x, y, x<y, y<x)
    scrambled_prompts: int = 0  # prompts whose parts are not in canonical order

    @property
    def canonical_order(self) -> list[int]:
        return sorted(self.parts, key=lambda i: self.parts[i].rank)


def _windows(units: Sequence[int], k: int) -> list[int]:
    """A hash of each k-unit window of `units` (len - k + 1 of them)."""
    return [hash(tuple(units[i : i + k])) for i in range(len(units) - k + 1)]


def analyze_order(prompts: Sequence[Prompt], tokenizer: Any | None,
                  k: int = K, min_part: int = MIN_PART) -> OrderAnalysis:  # fmt: skip
    """Find the shared parts of `prompts` and the orders they come in."""
    wins = {p.index: _windows(p.units, k) for p in prompts}
    holders: dict[int, list[int]] = defaultdict(list)
    for i, ws in wins.items():
        for w in set(ws):
            holders[w].append(i)
    sig = {w: hash(tuple(sorted(h))) for w, h in holders.items() if len(h) >= 2}
    layout: dict[int, list[tuple[int, int, int]]] = {}
    for p in prompts:
        runs = []
        for s, group in itertools.groupby(enumerate(wins[p.index]), key=lambda t: sig.get(t[1])):
            items = list(group)
            lo, hi = items[0][0], items[-1][0] + k  # windows cover k units past the last start
            if s is not None and hi - lo >= min_part:
                runs.append((items[0][1], lo, hi))  # a part is named by its first window
        layout[p.index] = _trim(runs)
    lengths: dict[int, Counter] = defaultdict(Counter)
    held: dict[int, set[int]] = defaultdict(set)
    for i, runs in layout.items():
        for pid, lo, hi in runs:
            lengths[pid][hi - lo] += 1
            held[pid].add(i)
    parts = {pid: Part(pid, lengths[pid].most_common(1)[0][0], len(h))
             for pid, h in held.items() if len(h) >= 2}  # fmt: skip
    # A run longer than its part's usual length reaches into what follows it: clamp it.
    layout = {i: [(pid, lo, min(hi, lo + parts[pid].length)) for pid, lo, hi in runs
                  if pid in parts] for i, runs in layout.items()}  # fmt: skip
    _rank(parts, layout)
    result = OrderAnalysis(parts, layout)
    _swaps(result)
    if tokenizer is not None:
        units = {p.index: p.units for p in prompts}
        for i, runs in layout.items():
            for pid, lo, _ in runs:
                if parts[pid].head is None:
                    parts[pid].head = tokenizer.decode_raw(units[i][lo : lo + HEAD])
    return result


def _trim(runs: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Cut each run where the next begins: a run's last windows reach into the text that
    follows it (a separator every part shares), which the next part's run also covers."""
    out = []
    for k, (pid, lo, hi) in enumerate(runs):
        nxt = runs[k + 1][1] if k + 1 < len(runs) else hi
        out.append((pid, lo, min(hi, nxt)))
    return out


def _rank(parts: dict[int, Part], layout: dict[int, list[tuple[int, int, int]]]) -> None:
    """Canonical order: the part held by the most prompts first, ties by mean position."""
    pos: dict[int, list[int]] = defaultdict(list)
    for runs in layout.values():
        for k, (pid, _, _) in enumerate(runs):
            pos[pid].append(k)
    order = sorted(parts, key=lambda i: (-parts[i].prompts, sum(pos[i]) / len(pos[i]), i))
    for r, pid in enumerate(order):
        parts[pid].rank = r


def _swaps(a: OrderAnalysis) -> None:
    before: Counter = Counter()
    for runs in a.layout.values():
        ids = [pid for pid, _, _ in runs]
        for x, y in itertools.combinations(ids, 2):
            before[(x, y)] += 1
        ranks = [a.parts[i].rank for i in ids]
        if ranks != sorted(ranks):
            a.scrambled_prompts += 1
    seen = set()
    for (x, y), n in before.items():
        m = before.get((y, x), 0)
        if m and (y, x) not in seen:
            seen.add((x, y))
            a.swapped.append((x, y, n, m))
    a.swapped.sort(key=lambda t: -(t[2] + t[3]))


def canonical(
    units: list[int], runs: list[tuple[int, int, int]], parts: dict[int, Part]
) -> list[int]:
    """`units` with its parts (`runs`, in prompt order) put in canonical order, in place of
    one another; the units between parts stay where they are. Overlapping runs (parts
    that cannot be told apart) leave the prompt as it is."""
    if len(runs) < 2 or any(a[2] > b[1] for a, b in itertools.pairwise(runs)):
        return units
    ordered = sorted(runs, key=lambda r: parts[r[0]].rank)
    out: list[int] = list(units[: runs[0][1]])
    for k, (slot, content) in enumerate(zip(runs, ordered, strict=True)):
        out.extend(units[content[1] : content[2]])
        gap_end = runs[k + 1][1] if k + 1 < len(runs) else len(units)
        out.extend(units[slot[2] : gap_end])
    return out
