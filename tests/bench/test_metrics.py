"""The metric math on synthetic timings: percentiles, inter-token gaps, throughput, hit rate."""

from __future__ import annotations

import itertools
import math

import pytest

from radixlm.bench.metrics import RequestResult, distribution, summarize
from radixlm.bench.runner import arrival_times


def result(
    i: int,
    start: float,
    chunks: list[tuple[float, int]],
    prompt: int,
    cached: int | None,
    error: str | None = None,
) -> RequestResult:
    r = RequestResult(i, prompt, cached, [], "", start, chunks[-1][0] if chunks else start)
    r.chunk_times = [t for t, _ in chunks]
    r.chunk_tokens = [k for _, k in chunks]
    r.error = error
    return r


def test_percentiles_interpolate_linearly():
    d = distribution([float(x) for x in range(1, 101)])
    assert d == pytest.approx({"mean": 50.5, "p50": 50.5, "p90": 90.1, "p99": 99.01})
    assert distribution([3.0]) == {"mean": 3.0, "p50": 3.0, "p90": 3.0, "p99": 3.0}
    assert distribution([]) == {"mean": None, "p50": None, "p90": None, "p99": None}


def test_ttft_and_itl_split_multi_token_chunks():
    r = result(0, 10.0, [(10.5, 1), (10.7, 1), (11.1, 2)], 100, 40)
    assert r.ttft == pytest.approx(0.5)
    assert r.itls() == pytest.approx([0.2, 0.2, 0.2])  # the 2-token chunk after 0.4 s
    assert r.output_tokens == 4 and r.e2e == pytest.approx(1.1)


def test_summary_throughput_and_hit_rate():
    ok1 = result(0, 0.0, [(1.0, 1), (2.0, 1)], 100, 80)
    ok2 = result(1, 1.0, [(1.5, 1), (3.0, 3)], 300, 60)
    failed = result(2, 0.0, [], 999, None, error="HTTP 400")
    s = summarize([ok1, ok2, failed], duration=4.0, oracle=0.5)
    assert (s["completed"], s["failed"]) == (2, 1)
    assert (s["prompt_tokens"], s["output_tokens"], s["cached_tokens"]) == (400, 6, 140)
    assert s["request_throughput"] == pytest.approx(0.5)
    assert s["input_throughput"] == pytest.approx(100.0)
    assert s["output_throughput"] == pytest.approx(1.5)
    assert s["total_throughput"] == pytest.approx(101.5)
    assert s["hit_rate"] == pytest.approx(0.35) and s["hit_vs_oracle"] == pytest.approx(0.7)
    assert s["ttft_s"]["mean"] == pytest.approx(0.75)
    assert s["itl_s"]["p50"] == pytest.approx(0.5)  # gaps 1.0, 0.5, 0.5, 0.5
    assert s["e2e_s"]["p50"] == pytest.approx(2.0)


def test_no_reported_cache_means_no_hit_rate():
    s = summarize([result(0, 0.0, [(1.0, 1)], 10, None)], duration=1.0, oracle=0.0)
    assert s["hit_rate"] is None and s["cached_tokens"] is None and s["hit_vs_oracle"] is None


def test_arrival_times():
    assert arrival_times(4, math.inf, 0) == [0.0] * 4
    times = arrival_times(4000, 20.0, 1)
    assert times == arrival_times(4000, 20.0, 1) and times[0] == 0.0
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) > 0
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 20, rel=0.1)
