"""Per-request timings and the run's summary: throughput, latency percentiles, hit rate.

Times are `time.perf_counter()` seconds. A request's TTFT runs from when it was sent to
its first output token; its inter-token latencies are the gaps between later tokens (a
chunk that carries k tokens after a gap g counts as k gaps of g / k).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass
class RequestResult:
    """What one request did. `cached_tokens` is None when the server does not report it."""

    index: int
    prompt_tokens: int  # as the server counted them when it says, else the client's count
    cached_tokens: int | None
    output_ids: list[int]
    text: str
    start: float
    end: float
    chunk_times: list[float] = field(default_factory=list)  # arrival of each token chunk
    chunk_tokens: list[int] = field(default_factory=list)  # tokens in each chunk
    error: str | None = None

    @property
    def output_tokens(self) -> int:
        return sum(self.chunk_tokens)

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.start if self.chunk_times else None

    @property
    def e2e(self) -> float:
        return self.end - self.start

    def itls(self) -> list[float]:
        """Inter-token latencies after the first token."""
        out: list[float] = []
        for prev, now, k in zip(self.chunk_times, self.chunk_times[1:], self.chunk_tokens[1:],
                                strict=False):  # fmt: skip
            out += [(now - prev) / k] * k
        return out


def distribution(values: Sequence[float]) -> dict[str, float | None]:
    """mean and p50/p90/p99 (linear interpolation) of `values`; all None when empty."""
    if not values:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}}
    arr = np.asarray(values, dtype=np.float64)
    out: dict[str, float | None] = {"mean": float(arr.mean())}
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(arr, p))
    return out


def summarize(results: Sequence[RequestResult], duration: float, oracle: float) -> dict[str, Any]:
    """The run's summary over the successful requests; `duration` in seconds (> 0).

    Throughputs are per second of `duration`; `hit_rate` is cached over prompt tokens of
    the requests whose server reported cached tokens (None if none did).
    """
    ok = [r for r in results if r.error is None]
    prompt = sum(r.prompt_tokens for r in ok)
    output = sum(r.output_tokens for r in ok)
    reported = [r for r in ok if r.cached_tokens is not None]
    reported_prompt = sum(r.prompt_tokens for r in reported)
    cached = sum(r.cached_tokens or 0 for r in reported)
    hit = cached / reported_prompt if reported and reported_prompt else None
    return {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "duration_s": duration,
        "prompt_tokens": prompt,
        "output_tokens": output,
        "cached_tokens": cached if reported else None,
        "request_throughput": len(ok) / duration,
        "input_throughput": prompt / duration,
        "output_throughput": output / duration,
        "total_throughput": (prompt + output) / duration,
        "ttft_s": distribution([t for r in ok if (t := r.ttft) is not None]),
        "itl_s": distribution([x for r in ok for x in r.itls()]),
        "e2e_s": distribution([r.e2e for r in ok]),
        "hit_rate": hit,
        "oracle_hit_rate": oracle,
        "hit_vs_oracle": hit / oracle if hit is not None and oracle > 0 else None,
    }
