"""Where two mostly identical prompts differ: divergence point, differing spans, resync.

`diff_spans(a, b)` walks two unit sequences from the start: the first position
where they differ is the divergence point; from there it looks for the nearest
place where both continue identically for `K` units again (within `WINDOW` units
on each side), records the differing stretch as a span, and goes on. What it
returns says how much of `a` after the divergence was identical to `b`: the
tokens a cache could have reused had the spans not been there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from radixlm.kvcache.radix_cache import common_prefix_len

K = 8  # units that must agree again for the sequences to count as back in step
WINDOW = 96  # how far past a difference each side may be searched for the resync
MAX_SPANS = 8


@dataclass(frozen=True)
class Diff:
    """One differing stretch: `a[a0:a1]` stands where `b[b0:b1]` stands in `b`."""

    a0: int
    a1: int
    b0: int
    b1: int


@dataclass(frozen=True)
class Alignment:
    """How `a` lines up against `b`.

    `diverge` is the common prefix length; `spans` the differing stretches after
    it, in order; `runs[i]` the identical units right after `spans[i]`, and
    `shared_after` their sum: the units of `a` after the divergence that were
    identical to `b`.
    """

    diverge: int
    spans: tuple[Diff, ...]
    runs: tuple[int, ...]

    @property
    def shared_after(self) -> int:
        return sum(self.runs)


def _resync(a: Sequence[int], b: Sequence[int], pa: int, pb: int) -> tuple[int, int] | None:
    """The nearest (i, j), by i + j, with a[pa+i : pa+i+K] == b[pb+j : pb+j+K]; None if none."""
    grams: dict[tuple[int, ...], int] = {}
    end_b = min(len(b) - K, pb + WINDOW)
    for j in range(pb, end_b + 1):
        grams.setdefault(tuple(b[j : j + K]), j - pb)
    best: tuple[int, int] | None = None
    end_a = min(len(a) - K, pa + WINDOW)
    for i in range(0, end_a - pa + 1):
        if best is not None and i >= best[0] + best[1]:
            break
        j = grams.get(tuple(a[pa + i : pa + i + K]))
        if j is not None and (best is None or i + j < best[0] + best[1]):
            best = (i, j)
    return best


def diff_spans(a: Sequence[int], b: Sequence[int]) -> Alignment:
    """Align `a` against `b` (see the module docstring); `a` and `b` are tuples or lists."""
    ta, tb = tuple(a), tuple(b)
    p = common_prefix_len(ta, tb)
    if p >= len(ta) or p >= len(tb):
        return Alignment(p, (), ())
    spans: list[Diff] = []
    runs: list[int] = []
    pa = pb = p
    while len(spans) < MAX_SPANS and pa < len(ta) and pb < len(tb):
        hit = _resync(ta, tb, pa, pb)
        if hit is None:
            break
        i, j = hit
        spans.append(Diff(pa, pa + i, pb, pb + j))
        pa, pb = pa + i, pb + j
        run = common_prefix_len(ta[pa:], tb, pb)
        runs.append(run)
        pa, pb = pa + run, pb + run
    if not spans and p < len(ta):
        spans.append(Diff(p, len(ta), p, len(tb)))  # never back in step
        runs.append(0)
    return Alignment(p, tuple(spans), tuple(runs))
