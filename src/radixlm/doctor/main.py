"""`radixlm replay` and `radixlm doctor`: read a trace, run, print."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from radixlm.doctor.config import DoctorConfig, ReplayConfig

log = logging.getLogger(__name__)


def run_replay(cfg: ReplayConfig) -> int:
    """Replay the trace at every size and policy; print a table (or JSON). Exit status."""
    from radixlm.doctor.replay import replay, scheduler_config
    from radixlm.doctor.units import to_requests
    from radixlm.trace.reader import TraceError, read_trace

    try:
        trace = read_trace(cfg.trace)
    except (TraceError, OSError) as e:
        print(f"radixlm replay: error: {e}", file=sys.stderr)
        return 1
    h = trace.header
    unit = h.page_size if h.hashed else 1
    reqs = to_requests(trace.records, unit)
    rows = []
    for policy in cfg.policies:
        sched = scheduler_config(h.scheduler, policy)
        for n in cfg.cache_tokens:
            r = replay(reqs, n, sched, h.context_length, unit)
            rows.append({**r.to_dict(), "requests": len(reqs),
                         "requests_per_s": len(reqs) / r.seconds if r.seconds else None})
    measured = _measured(trace)
    if cfg.json:
        print(json.dumps({"measured": measured, "server_pool_tokens": h.max_total_tokens,
                          "results": rows}, indent=1))  # fmt: skip
    else:
        print(f"{len(reqs)} requests; measured hit rate {100 * measured:.1f}% at the server's "
              f"pool of {h.max_total_tokens} tokens")
        print(f"{'policy':>10} {'cache tokens':>13} {'hit rate':>9} {'req/s':>9}")
        for r in rows:
            print(f"{r['policy']:>10} {r['cache_tokens']:>13} {100 * r['hit_rate']:>8.1f}% "
                  f"{r['requests_per_s'] or 0:>9.0f}")
    if cfg.plot:
        _plot(rows, cfg.plot)
    return 0


def _measured(trace: Any) -> float:
    recs = [r for r in trace.records if r.admitted]
    total = sum(r.prompt_len for r in recs)
    return sum(r.cached for r in recs) / total if total else 0.0


def _plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for policy in dict.fromkeys(r["policy"] for r in rows):
        mine = [r for r in rows if r["policy"] == policy]
        pts = sorted((r["cache_tokens"], 100 * r["hit_rate"]) for r in mine)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=policy)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="cache size (tokens)", ylabel="hit rate (%)", ylim=(0, 100))
    ax.legend()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def run_doctor(cfg: DoctorConfig) -> int:
    """Diagnose a trace directory or a live server's trace; print text or JSON. Exit status."""
    from radixlm.doctor.render import html_report, text_report

    try:
        rep = _remote(cfg) if cfg.url else _local(cfg)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"radixlm doctor: error: {e}", file=sys.stderr)
        return 1
    if cfg.html:
        Path(cfg.html).write_text(html_report(rep), encoding="utf-8")
    print(json.dumps(rep, indent=1) if cfg.json else text_report(rep), end="" if not cfg.json
          else "\n")  # fmt: skip
    return 0


def _local(cfg: DoctorConfig) -> dict[str, Any]:
    from radixlm.doctor.report import DoctorOptions, diagnose
    from radixlm.trace.reader import read_trace

    assert cfg.trace is not None
    trace = read_trace(cfg.trace)
    tokenizer = None if trace.hashed else _tokenizer(cfg.tokenizer or trace.header.model)
    t0 = time.perf_counter()
    rep = diagnose(trace, tokenizer, DoctorOptions(cfg.cache_tokens, cfg.policy))
    log.info("diagnosed %d requests in %.1f s", len(trace.records), time.perf_counter() - t0)
    return rep


def _tokenizer(path: str) -> Any | None:
    """The tokenizer at `path`, or None (no text in the report) when it cannot be loaded."""
    from radixlm.tokenizer import load_tokenizer

    try:
        from radixlm.loader import resolve_model_path

        return load_tokenizer(resolve_model_path(path))
    except Exception as e:  # any loader failure: the report is still useful without text
        log.warning("no tokenizer (%s): the report shows no text; see --tokenizer", e)
        return None


def _remote(cfg: DoctorConfig) -> dict[str, Any]:
    """The report a live server computes on its newest records (`GET /doctor`)."""
    import httpx

    assert cfg.url is not None
    params: dict[str, Any] = {"limit": cfg.limit, "format": "json"}
    if cfg.cache_tokens:
        params["cache_tokens"] = cfg.cache_tokens
    if cfg.policy:
        params["policy"] = cfg.policy
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    try:
        resp = httpx.get(f"{cfg.url.rstrip('/')}/doctor", params=params, headers=headers,
                         timeout=600)  # fmt: skip
    except httpx.HTTPError as e:
        raise RuntimeError(f"cannot reach {cfg.url}: {e}") from None
    if resp.status_code != 200:
        raise RuntimeError(f"{cfg.url}/doctor answered {resp.status_code}: {resp.text[:300]}")
    return resp.json()
