"""A trace record as the replay's unit sequence: token ids, or page hashes in hash mode.

In token mode a unit is a token. In hash mode a unit is a page of `page_size`
tokens: a prompt is its page hashes plus one unit that stands for the partial
last page (never shared), and output units are fresh ids that match nothing.
Fresh ids are negative, so they never equal a token id or a page hash.
"""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass

from radixlm.trace.record import TraceRecord


@dataclass(frozen=True)
class ReplayRequest:
    """One trace request in replay units (`key`: prompt units; `output`: its output units)."""

    index: int  # position in the trace's arrival order
    step: int  # engine steps run before it arrived
    tenant: str | None
    key: list[int]
    output: list[int]
    max_new: int  # max_new_tokens in units
    prompt_tokens: int  # the real prompt length in tokens
    logprob_start: int = -1


class FreshIds:
    """Negative ids, each used once: tokens no prompt holds."""

    def __init__(self) -> None:
        self._next = itertools.count(1)

    def take(self, n: int) -> list[int]:
        return [-next(self._next) for _ in range(n)]


class IdTable:
    """One int object per id value, so the same id in two requests is the same object.

    The tree compares keys as tuples of ints, and CPython's tuple compare checks
    identity before value: two 800-token prefixes compare in ~2 us when their ints
    are shared objects against ~8 us when each request parsed its own (JSON gives
    every number a new object). `shared` maps a list of ids in ~11 us per 1,000.
    """

    def __init__(self, size: int = 1 << 16) -> None:
        self._build(size)

    def _build(self, size: int) -> None:
        # [0, size) then [-size, 0): a negative index wraps to its own value.
        self._size = size
        self._ints = (*range(size), *range(-size, 0))

    def shared(self, ids: list[int]) -> list[int]:
        """`ids` with every value replaced by the table's object of that value (equal list)."""
        if len(ids) < 2:
            return ids  # itemgetter of one index returns the item, not a tuple
        try:
            return list(operator.itemgetter(*ids)(self._ints))
        except IndexError:  # an id outside the table: grow it (up to 2**22 ids) or keep ids
            need = max(max(ids), -min(ids)) + 1
            if need > 1 << 22:
                return ids
            self._build(max(need, 2 * self._size))
            return self.shared(ids)


def prompt_units(rec: TraceRecord, page_size: int, fresh: FreshIds) -> list[int]:
    """The prompt of `rec` as units (see the module docstring)."""
    if rec.prompt is not None:
        return rec.prompt
    pages = list(rec.pages or [])
    if rec.prompt_len > len(pages) * page_size or not pages:
        pages += fresh.take(1)
    return pages


def to_requests(records: list[TraceRecord], page_size: int = 1) -> list[ReplayRequest]:
    """The admitted requests of `records` (in order) as replay requests.

    Requests never admitted (aborted while queued) are left out: the server's hit
    rate does not count them either.
    """
    fresh, table = FreshIds(), IdTable()
    out = []
    for i, rec in enumerate(records):
        if not rec.admitted or rec.prompt_len == 0:
            continue
        key = prompt_units(rec, page_size, fresh)
        if rec.prompt is not None:
            key = table.shared(key)
        if rec.output is not None and page_size == 1:
            output = table.shared(rec.output)
        else:
            output = fresh.take(-(-rec.output_len // page_size))
        max_new = max(-(-rec.max_new_tokens // page_size), len(output))
        start = rec.logprob_start if page_size == 1 else -1
        out.append(ReplayRequest(i, rec.step, rec.tenant, key, output, max_new, rec.prompt_len,
                                 start))  # fmt: skip
    return out
