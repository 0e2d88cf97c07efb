"""`radixlm bench` against a live `radixlm serve` on a tiny model, as a user runs it.

The measured hit rate must equal the server's own count (the /metrics prefix-cache
counters over the run), and the records must turn into a report with plots.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

import httpx
import pytest
from e2e.server_process import free_port, start_server, stop_server
from prometheus_client.parser import text_string_to_metric_families

from radixlm.bench.config import BenchRunConfig
from radixlm.bench.main import load_hf_tokenizer, make_backend
from radixlm.bench.runner import run_workload
from radixlm.bench.vocab import word_vocab
from radixlm.bench.workload import Part
from radixlm.bench.workloads import build_workload

SHARED = [
    "--param",
    "groups=2",
    "--param",
    "prompts_per_group=4",
    "--param",
    "system_len=96",
    "--param",
    "question_len=8",
    "--param",
    "output_len=4",
]


@pytest.fixture(scope="module")
def bench_server(tiny_model_factory):
    model = str(tiny_model_factory("llama"))
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "radixlm.cli",
        "--log-level",
        "warning",
        "serve",
        "--model",
        model,
        "--port",
        str(port),
        "--max-total-tokens",
        "8192",
        "--disable-request-log",
    ]
    proc = start_server(cmd, port)
    yield f"http://127.0.0.1:{port}", model
    assert stop_server(proc, signal.SIGTERM) in (0, 128 + signal.SIGTERM)


def cache_counters(url: str) -> tuple[float, float]:
    """(prefix cache hits, queries) from the server's /metrics."""
    text = httpx.get(f"{url}/metrics").text
    m = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return m["radixlm:prefix_cache_hits_total"], m["radixlm:prefix_cache_queries_total"]


def bench(*args: str) -> subprocess.CompletedProcess:
    """`radixlm bench ARGS` in a child process, as a user runs it."""
    cmd = [sys.executable, "-m", "radixlm.cli", "bench", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def bench_here(capsys, *args: str) -> tuple[int, str]:
    """`radixlm bench ARGS` through the same entry point, in this process (no start-up cost).

    Returns the exit status and what it wrote to stderr."""
    from radixlm.cli import main

    capsys.readouterr()
    try:
        rc = main(["bench", *args])
    except SystemExit as e:
        rc = int(e.code or 0)
    return rc, capsys.readouterr().err


def test_shared_prefix_record_and_hit_rate_match_the_server(bench_server, tmp_path):
    url, _ = bench_server
    out = tmp_path / "sp.json"
    hits0, queries0 = cache_counters(url)
    res = bench(
        "run",
        "--base-url",
        url,
        "--workload",
        "shared-prefix",
        *SHARED,
        "--no-warmup",
        "--no-progress",
        "--label",
        "radixlm lpm",
        "--output",
        str(out),
    )
    assert res.returncode == 0, res.stderr  # the console command, in its own process
    hits1, queries1 = cache_counters(url)
    rec = json.loads(out.read_text())
    s = rec["summary"]
    assert (rec["label"], rec["workload"], rec["backend"]) == (
        "radixlm lpm",
        "shared-prefix",
        "native",
    )
    assert rec["workload_params"]["system_len"] == 96 and rec["machine"]["cores"] >= 1
    assert (s["completed"], s["failed"]) == (8, 0)
    assert s["prompt_tokens"] == 8 * (96 + 8) == queries1 - queries0
    assert s["output_tokens"] == 8 * 4
    assert s["cached_tokens"] == hits1 - hits0
    assert s["hit_rate"] == pytest.approx((hits1 - hits0) / (queries1 - queries0))
    assert s["server_hit_rate"] == pytest.approx(s["hit_rate"])
    assert s["oracle_hit_rate"] == pytest.approx(2 * 3 * 96 / (8 * 104))
    assert s["hit_rate"] >= 0.95 * s["oracle_hit_rate"]
    assert s["request_throughput"] == pytest.approx(8 / s["duration_s"])
    assert 0 < s["ttft_s"]["p50"] <= s["ttft_s"]["p99"] <= s["e2e_s"]["p99"]
    assert s["itl_s"]["mean"] > 0 and len(rec["requests"]) == 8
    assert sum(r["cached_tokens"] for r in rec["requests"]) == s["cached_tokens"]
    assert "hit rate" in res.stderr


def test_multi_turn_over_openai_with_poisson_arrivals(bench_server, tmp_path, capsys):
    url, model = bench_server
    out = tmp_path / "mt.json"
    hits0, queries0 = cache_counters(url)
    rc, err = bench_here(
        capsys,
        "run",
        "--backend",
        "openai",
        "--base-url",
        url,
        "--workload",
        "multi-turn",
        "--param",
        "conversations=3",
        "--param",
        "turns=3",
        "--param",
        "system_len=48",
        "--param",
        "user_len=8",
        "--param",
        "output_len=4",
        "--request-rate",
        "20",
        "--max-concurrency",
        "2",
        "--no-warmup",
        "--no-progress",
        "--tokenizer",
        model,
        "--seed",
        "5",
        "--output",
        str(out),
    )
    assert rc == 0, err
    hits1, queries1 = cache_counters(url)
    rec = json.loads(out.read_text())
    s = rec["summary"]
    assert s["completed"] == 9 and rec["request_rate"] == 20 and rec["max_concurrency"] == 2
    assert s["prompt_tokens"] == queries1 - queries0 and s["cached_tokens"] == hits1 - hits0
    reqs = rec["requests"]
    for later in reqs[3:]:  # each turn starts with the previous turn's prompt and answer
        parent = reqs[later["index"] - 3]
        # the answer goes back as text, so its token count is what the text encodes to
        assert later["prompt_tokens"] > parent["prompt_tokens"] + 8
        assert later["cached_tokens"] >= parent["prompt_tokens"]
        assert later["start_s"] >= parent["start_s"] + parent["e2e_s"]


def test_report_writes_table_and_plots_between_markers(bench_server, tmp_path, capsys):
    url, _ = bench_server
    records = []
    for label, workload in [("radixlm lpm", "unique"), ("other run", "unique")]:
        records.append(str(tmp_path / f"{label}.json"))
        rc, err = bench_here(
            capsys,
            "run",
            "--base-url",
            url,
            "--workload",
            workload,
            "--param",
            "requests=3",
            "--param",
            "prompt_len=32",
            "--param",
            "output_len=3",
            "--no-progress",
            "--label",
            label,
            "--output",
            records[-1],
        )
        assert rc == 0, err
    md = tmp_path / "RESULTS.md"
    from radixlm.bench.report import BEGIN, END

    md.write_text(f"# Title\n\nprose before\n\n{BEGIN}\nold\n{END}\n\nprose after\n")
    rc, err = bench_here(
        capsys,
        "report",
        *records,
        "--markdown",
        str(md),
        "--img-dir",
        str(tmp_path / "img"),
        "--baseline",
        "other run",
    )
    assert rc == 0, err
    text = md.read_text()
    assert text.startswith("# Title\n\nprose before") and text.endswith("prose after\n")
    assert "old" not in text
    assert "| unique | radixlm lpm | 3 |" in text and "| unique | other run | 3 |" in text
    assert "- unique: radixlm lpm throughput >= 0.97x" not in text  # needs radix-off
    for png in ("throughput", "ttft", "hit_rate", "ttft_vs_cached"):
        assert f"![{png}](img/{png}.png)" in text
        assert (tmp_path / "img" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"


def test_transformers_baseline_matches_the_server_greedy_outputs(bench_server):
    url, model = bench_server
    tok = load_hf_tokenizer(model)
    w = build_workload(
        "branching",
        word_vocab(tok),
        2,
        {"branches": 2, "root_len": 40, "branch_len": 4, "output_len": 5},
    )

    async def outputs(backend: str) -> tuple[list[list[int]], list[int | None]]:
        b = make_backend(BenchRunConfig(backend, "branching", base_url=url, model=model), tok)
        try:
            run = await run_workload(w, b, progress=False)
        finally:
            await b.aclose()
        assert all(r.error is None and r.output_tokens == 5 for r in run.results)
        return [r.output_ids for r in run.results], [r.cached_tokens for r in run.results]

    hf_ids, hf_cached = asyncio.run(outputs("transformers"))
    native_ids, native_cached = asyncio.run(outputs("native"))
    assert hf_ids == native_ids  # same prompts (answers fed back) -> same greedy tokens
    assert hf_cached == [0] * 6 and sum(c or 0 for c in native_cached) > 0


def test_bad_bench_flags_name_the_flag(capsys):
    rc, err = bench_here(capsys, "run", "--workload", "unique")
    assert rc == 2 and "--base-url" in err
    rc, err = bench_here(capsys, "run", "--base-url", "http://127.0.0.1:9", "--param", "x")
    assert rc == 2 and "--param" in err
    rc, err = bench_here(capsys, "run", "--base-url", "http://127.0.0.1:9", "--workload", "nope")
    assert rc == 2 and "unknown workload 'nope'" in err
    rc, err = bench_here(capsys, "run", "--base-url", "http://127.0.0.1:9", "--no-progress")
    assert rc == 2 and "cannot reach http://127.0.0.1:9" in err and "Traceback" not in err
    from radixlm.cli import main

    assert main(["bench", "workloads"]) == 0
    listing = capsys.readouterr().out
    assert "shared-prefix:" in listing and "scrambled:" in listing


def test_warmup_empties_the_prefix_cache_before_a_run(bench_server):
    """A prompt cached before the warm-up is not cached after it: a run starts from an
    empty cache, as the oracle hit rate assumes."""
    url, model = bench_server
    tok = load_hf_tokenizer(model)
    parts = (Part("user", tuple(word_vocab(tok).ids[:64])),)

    async def cached_before_and_after() -> tuple[int | None, str | None, int | None]:
        b = make_backend(BenchRunConfig("native", "unique", base_url=url, model=model), tok)
        try:
            await b.generate(0, parts, 1)
            before = (await b.generate(1, parts, 1)).cached_tokens
            flushed = await b.warmup(word_vocab(tok).ids[:8])
            return before, flushed, (await b.generate(2, parts, 1)).cached_tokens
        finally:
            await b.aclose()

    before, flushed, after = asyncio.run(cached_before_and_after())
    assert before and before >= 32 and flushed == "/flush_cache" and after == 0


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        ({"/flush_cache": 200}, "/flush_cache"),  # radixlm, SGLang
        ({"/flush_cache": 404, "/reset_prefix_cache": 200}, "/reset_prefix_cache"),  # vLLM
        ({"/slots": 200, "/slots/0": 200, "/slots/1": 200}, "/slots?action=erase"),  # llama.cpp
        ({"/slots": 200, "/slots/0": 200, "/slots/1": 501}, None),  # one slot kept its cache
        ({}, None),
    ],
)
def test_flush_cache_tries_each_server_kind(routes, expected):
    """The routes a server answers decide how the cache is emptied (a stand-in server:
    the vLLM and llama.cpp forms cannot run here)."""
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, request.url.query.decode()))
        code = routes.get(request.url.path, 404)
        return httpx.Response(code, json=[{"id": 0}, {"id": 1}] if code == 200 else {})

    async def flush() -> str | None:
        b = make_backend(BenchRunConfig("openai", "unique", base_url="http://x", model="m"), None)
        b.client = httpx.AsyncClient(base_url="http://x", transport=httpx.MockTransport(handler))
        try:
            return await b.flush_cache()
        finally:
            await b.aclose()

    assert asyncio.run(flush()) == expected
    if expected == "/slots?action=erase":
        assert ("POST", "/slots/1", "action=erase") in seen
