"""One run's JSON record: what ran, on what machine, the summary, and every request."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any

from radixlm.bench.config import BenchRunConfig
from radixlm.bench.metrics import summarize
from radixlm.bench.oracle import replay
from radixlm.bench.runner import RunOutcome
from radixlm.bench.workload import Workload

RECORD_VERSION = 1


def machine_info() -> dict[str, Any]:
    """The CPU model, core count, OS and Python of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "os": platform.platform(),
            "python": platform.python_version()}  # fmt: skip


def run_oracle(outcome: RunOutcome) -> float:
    """The oracle hit rate over the requests that succeeded (the hit rate's denominator)."""
    reusable = replay(outcome.events)
    ok = [r.index for r in outcome.results if r.error is None]
    total = sum(len(outcome.prompts[i]) for i in ok)
    return sum(reusable[i] for i in ok) / total if total else 0.0


def build_record(
    cfg: BenchRunConfig,
    workload: Workload,
    outcome: RunOutcome,
    server_delta: dict[str, int] | None,
    cache_flush: str | None = None,
) -> dict[str, Any]:
    """The record of a finished run (JSON-serialisable).

    `server_delta` is the change in the server's own prompt / cached token counters over
    the run (None when the server does not report them): `server_hit_rate` beside the
    measured `hit_rate` shows the two agree. `cache_flush` says how the server's prefix
    cache was emptied before the run (None: it was not, so earlier runs' prompts may
    have been cached).
    """
    summary = summarize(outcome.results, outcome.duration, run_oracle(outcome))
    if server_delta is not None and server_delta["prompt_tokens"] > 0:
        summary["server_hit_rate"] = server_delta["cached_tokens"] / server_delta["prompt_tokens"]
    requests = [
        {"index": r.index, "prompt_tokens": r.prompt_tokens, "cached_tokens": r.cached_tokens,
         "output_tokens": r.output_tokens, "ttft_s": r.ttft, "e2e_s": r.e2e,
         "start_s": r.start - min(x.start for x in outcome.results), "error": r.error}
        for r in outcome.results
    ]  # fmt: skip
    return {
        "version": RECORD_VERSION,
        "label": cfg.label or cfg.backend,
        "backend": cfg.backend,
        "base_url": cfg.base_url,
        "model": cfg.model,
        "workload": workload.name,
        "workload_params": workload.params,
        "request_rate": None if cfg.request_rate == float("inf") else cfg.request_rate,
        "max_concurrency": cfg.max_concurrency,
        "cache_flush": cache_flush,
        "seed": cfg.seed,
        "num_requests": len(workload.requests),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "summary": summary,
        "server_counters_delta": server_delta,
        "requests": requests,
    }


def write_record(record: dict[str, Any], path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=1) + "\n")


def read_record(path: str) -> dict[str, Any]:
    """A record written by `write_record`; ValueError if it is not one."""
    rec = json.loads(Path(path).read_text())
    if not isinstance(rec, dict) or rec.get("version") != RECORD_VERSION:
        raise ValueError(f"{path}: not a radixlm bench record (version {RECORD_VERSION})")
    return rec
