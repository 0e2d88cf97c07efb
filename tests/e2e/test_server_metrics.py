"""/metrics, concurrency and cache salts on the live `radixlm serve` server."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture(scope="module")
def server(cli_server):
    return cli_server


def scrape(url: str) -> dict[str, float]:
    """Every sample of GET /metrics by name (histogram series included)."""
    res = httpx.get(f"{url}/metrics")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
    return {
        s.name: s.value
        for fam in text_string_to_metric_families(res.text)
        for s in fam.samples
        if not s.labels or "le" not in s.labels
    }


def test_metrics_expose_engine_counters_and_latency_histograms(server):
    body = {"text": "metrics please", "sampling_params": {"max_new_tokens": 5, "ignore_eos": True}}
    assert httpx.post(f"{server.url}/generate", json=body).status_code == 200
    m = scrape(server.url)
    info = httpx.get(f"{server.url}/get_server_info").json()
    for name in ("num_running_reqs", "num_queue_reqs", "token_usage", "cache_hit_rate"):
        assert f"radixlm:{name}" in m
    assert m["radixlm:prompt_tokens_total"] == info["prompt_tokens"] > 0
    assert m["radixlm:generation_tokens_total"] == info["generated_tokens"] >= 5
    assert m["radixlm:prefix_cache_queries_total"] == info["prompt_tokens"]
    assert m["radixlm:prefix_cache_hits_total"] == info["cached_tokens"]
    assert m["radixlm:time_to_first_token_seconds_count"] >= 1
    assert m["radixlm:e2e_request_latency_seconds_count"] >= 1
    assert m["radixlm:inter_token_latency_seconds_count"] >= 4
    assert m["radixlm:e2e_request_latency_seconds_sum"] > 0


async def _stream_one(client: httpx.AsyncClient, url: str, text: str) -> str:
    body = {"text": text, "stream": True, "sampling_params": {"max_new_tokens": 4}}
    last = ""
    async with client.stream("POST", f"{url}/generate", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                last = line
    return last


def test_64_concurrent_streams_sharing_a_prefix_and_the_hit_rate_agrees(server):
    prefix = "a long shared system prompt that every one of these requests starts with " * 3

    async def main() -> list[str]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            jobs = [_stream_one(client, server.url, f"{prefix} question {i}") for i in range(64)]
            return await asyncio.gather(*jobs)

    assert all(last == "data: [DONE]" for last in asyncio.run(main()))
    m = scrape(server.url)
    info = httpx.get(f"{server.url}/get_server_info").json()
    assert info["num_running_reqs"] == 0 and info["integrity_error"] is None
    assert m["radixlm:cache_hit_rate"] == info["cache_hit_rate"] > 0
    hits, queries = m["radixlm:prefix_cache_hits_total"], m["radixlm:prefix_cache_queries_total"]
    assert hits / queries == pytest.approx(info["cached_tokens"] / info["prompt_tokens"])
    assert m["radixlm:e2e_request_latency_seconds_count"] >= 64


def test_cache_salt_separates_cached_prefixes(server):
    text = "salted prompt: the quick brown fox jumps over the lazy dog"

    def cached(salt: str | None) -> int:
        body = {"text": text, "sampling_params": {"max_new_tokens": 2}, "cache_salt": salt}
        res = httpx.post(f"{server.url}/generate", json=body)
        assert res.status_code == 200
        return res.json()["meta_info"]["cached_tokens"]

    cached(None)
    assert cached("tenant-a") == 0
    assert cached("tenant-a") > 0
    assert cached("tenant-b") == 0
    assert cached(None) > 0
