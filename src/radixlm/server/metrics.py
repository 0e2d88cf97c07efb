"""Prometheus metrics for `GET /metrics`, and one log line per finished request.

Two sources. The engine's own counters (prompt tokens admitted, cached tokens,
generated tokens, running / waiting requests, KV usage) are read with one
"get_stats" call per scrape, so `/metrics` and `/get_server_info` always agree.
Latencies (time to first token, between tokens, end to end) are observed here,
in the HTTP process, from the arrival times of each request's chunks.

Each app has its own `CollectorRegistry`, so several apps can live in one process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from radixlm.engine.messages import ChunkMsg, GenerateMsg

log = logging.getLogger("radixlm.server.requests")

PREFIX = "radixlm:"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# (metric name, engine stats key, help) for the values read from the engine per scrape.
ENGINE_GAUGES = (
    ("cache_hit_rate", "cache_hit_rate", "Prefix cache hit rate: cached / admitted prompt tokens"),
    ("num_running_reqs", "num_running_reqs", "Requests running (decoding or in prefill)"),
    ("num_queue_reqs", "num_waiting_reqs", "Requests waiting in the queue"),
    ("token_usage", "token_usage", "Share of the KV pool held by running requests"),
)
ENGINE_COUNTERS = (
    ("prefix_cache_queries", "prompt_tokens", "Prompt tokens admitted (prefix cache queries)"),
    ("prefix_cache_hits", "cached_tokens", "Prompt tokens served from the prefix cache"),
    ("prompt_tokens", "prompt_tokens", "Prompt tokens admitted"),
    ("generation_tokens", "generated_tokens", "Tokens generated"),
)


class EngineStatsCollector(Collector):
    """Exposes the last engine stats snapshot given to `update` as gauges and counters."""

    def __init__(self) -> None:
        self.stats: dict[str, Any] = {}

    def update(self, stats: dict[str, Any]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        """Yields one metric family per engine value (0 before the first snapshot)."""
        for name, key, doc in ENGINE_GAUGES:
            g = GaugeMetricFamily(PREFIX + name, doc)
            g.add_metric([], float(self.stats.get(key, 0.0)))
            yield g
        for name, key, doc in ENGINE_COUNTERS:
            c = CounterMetricFamily(PREFIX + name, doc)
            c.add_metric([], float(self.stats.get(key, 0)))
            yield c


class ServerMetrics:
    """The app's registry: engine values per scrape plus latency histograms per request."""

    def __init__(self, request_log: bool = True) -> None:
        self.registry = CollectorRegistry()
        self.request_log = request_log
        self.engine = EngineStatsCollector()
        self.registry.register(self.engine)
        self.ttft = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "Time from sending a request to the engine to its first token",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.itl = Histogram(
            PREFIX + "inter_token_latency_seconds",
            "Time between consecutive tokens of a request",
            buckets=ITL_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            PREFIX + "e2e_request_latency_seconds",
            "Time from sending a request to the engine to its last chunk",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def render(self, stats: dict[str, Any]) -> bytes:
        """The text exposition format of every metric, with `stats` as the engine values."""
        self.engine.update(stats)
        return generate_latest(self.registry)

    def request_done(self, msg: GenerateMsg, last: ChunkMsg, sent: float, times: list) -> None:
        """Observe one finished request and log it.

        `sent` is when it went to the engine; `times` holds `(arrival, new token count)`
        for each chunk, in order (perf_counter seconds).
        """
        first = next((t for t, n in times if n), None)
        if first is not None:
            self.ttft.observe(first - sent)
        prev = None
        for t, n in times:
            if not n:
                continue
            if prev is not None:
                self.itl.observe((t - prev) / n)
            prev = t
        end = times[-1][0] if times else sent
        self.e2e.observe(end - sent)
        if self.request_log:
            log.info(request_line(msg.rid, last.meta_info, first, sent, end))


def request_line(
    rid: str, meta: dict[str, Any], first: float | None, sent: float, end: float
) -> str:
    """The log line of a finished request: token counts, TTFT, latency, finish reason."""
    ttft = "-" if first is None else f"{first - sent:.3f}s"
    reason = meta.get("finish_reason") or {}
    return (
        f"request {rid} finished ({reason.get('type', '?')}): "
        f"prompt_tokens={meta.get('prompt_tokens')} cached_tokens={meta.get('cached_tokens')} "
        f"completion_tokens={meta.get('completion_tokens')} ttft={ttft} "
        f"e2e={end - sent:.3f}s"
    )
