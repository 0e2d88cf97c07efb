"""Fault injection: make a model forward raise, as a bug in a kernel or a shape would,
or take longer, as a bigger model would (so tests of timing need no big model).

`POISON` (three equal token ids in a row) never occurs in a decode step (one new
token per sequence), so only a prefill whose new tokens hold it fails.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

POISON_TOKEN = 7
POISON = [POISON_TOKEN] * 3


class InjectedFault(RuntimeError):
    """The error an injected fault raises."""


def has_poison(ids: list[int]) -> bool:
    return any(ids[i : i + 3] == POISON for i in range(len(ids) - 2))


def poisoned(forward: Callable[..., Any]) -> Callable[..., Any]:
    """`ModelRunner.forward` that raises when a sequence's new tokens hold POISON.

    It first writes garbage K/V into the batch's new slots, as a forward failing in a late
    layer would have: none of it may reach the cache.
    """

    @functools.wraps(forward)
    def run(self: Any, items: list[Any]) -> Any:
        if any(has_poison(it.new_ids) for it in items):
            for it in items:
                self.pool.k_buffer[:, it.slots[it.prefix_len :]] = float("nan")
            raise InjectedFault("injected fault in the forward")
        return forward(self, items)

    return run


def slowed(forward: Callable[..., Any], seconds: float) -> Callable[..., Any]:
    """`ModelRunner.forward` that sleeps `seconds` first: every step takes at least that."""

    @functools.wraps(forward)
    def run(self: Any, items: list[Any]) -> Any:
        time.sleep(seconds)
        return forward(self, items)

    return run
