"""What a differing span looks like: a timestamp, date, time, id, counter, number or name.

`classify(tokenizer, ids, lo, hi)` decodes a window of `ids` around the differing
tokens `ids[lo:hi]`, finds the pattern that covers the differing characters, and
returns its kind together with the token range the whole value occupies (a
timestamp whose seconds alone differ is still the whole timestamp).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CONTEXT = 24  # tokens decoded on each side of the differing ones

_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.?"
_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*\.?,?"
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("timestamp", re.compile(
        r"\d{4}-\d{2}-\d{2}[T ]\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2}| ?UTC)?"
    )),
    ("timestamp", re.compile(rf"(?:{_DAY} )?{_MONTH} \d{{1,2}},? \d{{4}},? \d{{1,2}}:\d{{2}}"
                             r"(?::\d{2})?(?: ?[AaPp][Mm])?")),
    ("date", re.compile(rf"\d{{4}}-\d{{2}}-\d{{2}}|\d{{1,2}}/\d{{1,2}}/\d{{2,4}}|"
                        rf"(?:{_DAY} )?{_MONTH} \d{{1,2}}(?:,? \d{{4}})?|"
                        rf"\d{{1,2}} {_MONTH},? \d{{4}}")),
    ("time", re.compile(r"\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?: ?[AaPp][Mm])?")),
    ("id", re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")),
    ("id", re.compile(r"(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[A-Za-z0-9][\w-]{5,}")),
    ("number", re.compile(r"\d+(?:[.,]\d+)*")),
    ("name", re.compile(r"[A-Z][a-z]+(?: [A-Z][a-z]+)*")),
)  # fmt: skip
KINDS = ("timestamp", "date", "time", "id", "counter", "number", "name", "text")


@dataclass(frozen=True)
class SpanText:
    """A differing span as text: its kind, the value, and its token range in the prompt."""

    kind: str
    value: str  # the whole matched value (or the differing text)
    lo: int  # the value's token range: ids[lo:hi]
    hi: int


def _offsets(tokenizer: Any, ids: Sequence[int]) -> list[int]:
    """Character offset of each token boundary of `ids` in their decoded text."""
    out = [0]
    for k in range(1, len(ids) + 1):
        out.append(len(tokenizer.decode_raw(ids[:k])))
    return out


def classify(tokenizer: Any, ids: Sequence[int], lo: int, hi: int) -> SpanText:
    """The kind and full token range of the value that differs at `ids[lo:hi]`.

    An empty span (`lo == hi`: text present only on the other side) is widened to
    the token before it, so there is something to classify.
    """
    if hi <= lo:
        lo, hi = max(lo - 1, 0), min(max(lo, 1), len(ids))
    w0, w1 = max(0, lo - CONTEXT), min(len(ids), hi + CONTEXT)
    window = list(ids[w0:w1])
    offs = _offsets(tokenizer, window)
    text = tokenizer.decode_raw(window)
    c0, c1 = offs[lo - w0], offs[hi - w0]
    for kind, pattern in PATTERNS:
        for m in pattern.finditer(text):
            if m.start() < max(c1, c0 + 1) and m.end() > c0:  # overlaps the differing chars
                t0 = max(k for k in range(len(offs)) if offs[k] <= m.start())
                t1 = min(k for k in range(len(offs)) if offs[k] >= m.end())
                t0, t1 = min(t0, lo - w0), max(t1, hi - w0)
                return SpanText(kind, m.group(0), w0 + t0, w0 + t1)
    return SpanText("text", text[c0:c1], lo, hi)


def looks_like_counter(values: Sequence[str]) -> bool:
    """True when numbers taken in arrival order mostly go up (a request counter)."""
    nums = [int(v) for v in values if v.isdigit()]
    if len(nums) < 3:
        return False
    ups = sum(1 for x, y in itertools.pairwise(nums) if y > x)
    return ups >= 0.8 * (len(nums) - 1)
