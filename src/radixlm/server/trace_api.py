"""The live request trace: `GET /trace` (its newest records) and `GET /doctor` (the doctor's
report on them), for servers started with `--trace-dir`.

Both are admin routes (the guard keeps tenant keys out: a trace holds every tenant's
prompts). Reading and diagnosing run in worker threads, off the event loop and off the
tokenizer's threads.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from radixlm.server.errors import ApiError
from radixlm.server.state import ServerState

router = APIRouter()

MAX_RECORDS = 20000  # the most records one call reads


def _trace_dir(request: Request) -> str:
    state: ServerState = request.app.state.server
    trace_dir = state.cfg.engine.trace.trace_dir
    if trace_dir is None:
        raise ApiError(404, "the request trace is off: start the server with --trace-dir DIR",
                       "not_found_error")  # fmt: skip
    return trace_dir


def _read(trace_dir: str, limit: int) -> Any:
    from radixlm.trace.reader import TraceError, read_trace

    try:
        return read_trace(trace_dir, limit=limit)
    except TraceError as e:
        raise ApiError(404, f"no trace yet: {e}", "not_found_error") from None


@router.get("/trace")
async def get_trace(request: Request, limit: int = Query(1000, ge=1, le=MAX_RECORDS)) -> Response:
    """The newest `limit` records of the trace, with its header, in arrival order."""
    trace = await asyncio.to_thread(_read, _trace_dir(request), limit)
    body = {"header": trace.header.to_dict(), "bad_lines": trace.bad_lines,
            "records": [{**r.to_json_dict(), "run": r.extra.get("run")} for r in trace.records]}
    return JSONResponse(body)  # fmt: skip


@router.get("/doctor")
async def get_doctor(
    request: Request,
    limit: int = Query(1000, ge=1, le=MAX_RECORDS),
    format: str = Query("json", pattern="^(json|text|html)$"),
    cache_tokens: int | None = Query(None, ge=16),
    policy: str | None = Query(None),
) -> Response:
    """The doctor's report on the newest `limit` records (json, text or html)."""
    from radixlm.config import SchedulePolicyName
    from radixlm.doctor.render import html_report, text_report
    from radixlm.doctor.report import DoctorOptions, diagnose

    if policy is not None and policy not in {p.value for p in SchedulePolicyName}:
        raise ApiError(400, f"policy: unknown policy {policy!r}", param="policy")
    state: ServerState = request.app.state.server
    trace_dir = _trace_dir(request)

    def run() -> dict[str, Any]:
        trace = _read(trace_dir, limit)
        return diagnose(trace, state.tokenizer, DoctorOptions(cache_tokens, policy))

    rep = await asyncio.to_thread(run)
    if format == "text":
        return PlainTextResponse(text_report(rep))
    if format == "html":
        return HTMLResponse(await asyncio.to_thread(html_report, rep))
    return JSONResponse(rep)
