"""Timing helper shared by the benchmark scripts (run them as `python benchmarks/NAME.py`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(
    fns: dict[str, Callable[[], object]],
    repeat: int,
    reduce: Callable[[list[float]], float] = statistics.median,
) -> dict[str, float]:
    """Seconds per call of each function (median by default), after one warm-up call each.

    The functions are timed in alternating rounds (A, B, A, B, ...) so that
    drifts in machine load hit every contender alike.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: reduce(ts) for name, ts in times.items()}
