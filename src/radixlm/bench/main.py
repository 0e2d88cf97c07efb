"""`radixlm bench run | report | workloads`: the commands, from frozen configs."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

import httpx

from radixlm.bench.config import BenchListConfig, BenchReportConfig, BenchRunConfig
from radixlm.bench.record import build_record, write_record
from radixlm.bench.runner import run_workload
from radixlm.bench.vocab import word_vocab
from radixlm.bench.workloads import build_workload, describe_workloads

log = logging.getLogger(__name__)


def _tokenizer_source(cfg: BenchRunConfig) -> str:
    """Where the tokenizer comes from: --tokenizer, --model, or the server's model path."""
    if cfg.tokenizer or cfg.model:
        return cfg.tokenizer or cfg.model  # type: ignore[return-value]

    assert cfg.base_url is not None
    res = httpx.get(f"{cfg.base_url.rstrip('/')}/get_model_info", timeout=30)
    res.raise_for_status()
    return res.json()["tokenizer_path"]


def load_hf_tokenizer(source: str) -> Any:
    """The `transformers` tokenizer of a HF dir, a .gguf file, or a radixlm model name."""
    from pathlib import Path

    from radixlm.loader import resolve_model_path
    from radixlm.tokenizer import load_tokenizer

    path = Path(source) if Path(source).exists() else resolve_model_path(source)
    return load_tokenizer(path).hf_tokenizer


def make_backend(cfg: BenchRunConfig, hf_tokenizer: Any) -> Any:
    """The backend `cfg.backend` names (loads the model for the transformers baseline)."""
    if cfg.backend == "transformers":
        from radixlm.bench.hf_baseline import TransformersBackend

        assert cfg.model is not None
        return TransformersBackend(cfg.model, cfg.dtype)
    from radixlm.bench.backends import HTTP_BACKENDS

    assert cfg.base_url is not None

    def encode(text: str) -> list[int]:
        return list(hf_tokenizer.encode(text, add_special_tokens=False))

    def decode(ids: Any) -> str:
        return hf_tokenizer.decode(list(ids))

    return HTTP_BACKENDS[cfg.backend](cfg.base_url, cfg.model, encode, decode)


async def _run(cfg: BenchRunConfig) -> dict[str, Any]:
    hf_tokenizer = load_hf_tokenizer(_tokenizer_source(cfg))
    vocab = word_vocab(hf_tokenizer)
    workload = build_workload(cfg.workload, vocab, cfg.seed, cfg.params)
    backend = make_backend(cfg, hf_tokenizer)
    flushed = None
    try:
        if cfg.warmup:
            flushed = await backend.warmup(vocab.ids[:8])
            if flushed is None:
                log.warning("could not empty the server's prefix cache: prompts of earlier "
                            "runs may be cached")
        before = await backend.server_counters()
        outcome = await run_workload(workload, backend, cfg.request_rate,
                                     cfg.max_concurrency, cfg.seed, cfg.progress)  # fmt: skip
        after = await backend.server_counters()
    finally:
        await backend.aclose()
    delta = None
    if before is not None and after is not None:
        delta = {k: after[k] - before[k] for k in before}
    return build_record(cfg, workload, outcome, delta, flushed)


def _print_summary(record: dict[str, Any]) -> None:
    s = record["summary"]
    errors = [r["error"] for r in record["requests"] if r["error"]]
    if errors:
        print(f"{len(errors)} requests failed; the first: {errors[0]}", file=sys.stderr)

    def ms(d: dict[str, Any], key: str) -> str:
        return "-" if d[key] is None else f"{d[key] * 1000:.1f} ms"

    hit = "-" if s["hit_rate"] is None else f"{s['hit_rate']:.1%}"
    print(f"{record['label']} on {record['workload']}: {s['completed']} ok, {s['failed']} failed "
          f"in {s['duration_s']:.2f} s; {s['request_throughput']:.2f} req/s, "
          f"{s['input_throughput']:.0f} in tok/s, {s['output_throughput']:.1f} out tok/s; "
          f"TTFT p50 {ms(s['ttft_s'], 'p50')} p99 {ms(s['ttft_s'], 'p99')}; "
          f"ITL p50 {ms(s['itl_s'], 'p50')}; hit rate {hit} "
          f"(oracle {s['oracle_hit_rate']:.1%})", file=sys.stderr)  # fmt: skip


def run_bench(cfg: BenchRunConfig | BenchReportConfig | BenchListConfig) -> int:
    """Run one bench command; returns the exit status (1 if a run had failed requests)."""
    if isinstance(cfg, BenchListConfig):
        print(describe_workloads())
        return 0
    if isinstance(cfg, BenchReportConfig):
        from radixlm.bench.report import write_report

        write_report(cfg)
        return 0
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    try:
        record = asyncio.run(_run(cfg))
    except (ValueError, OSError, RuntimeError) as e:  # bad input, no model, no server
        print(f"radixlm bench: error: {e}", file=sys.stderr)
        return 2
    except httpx.HTTPError as e:
        print(f"radixlm bench: error: cannot reach {cfg.base_url}: {e}", file=sys.stderr)
        return 2
    if cfg.output:
        write_record(record, cfg.output)
    else:
        print(json.dumps({k: v for k, v in record.items() if k != "requests"}, indent=1))
    _print_summary(record)
    return 1 if record["summary"]["failed"] else 0
