"""SGLang's native routes: /generate, /health, /get_model_info, /get_server_info, ..."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

import radixlm
from radixlm.engine.requests import RequestOptions
from radixlm.server.dispatch import (
    collect,
    collect_unless_gone,
    merged,
    plan,
)
from radixlm.server.errors import ApiError, error_body
from radixlm.server.guards import caller_of
from radixlm.server.protocol import AbortRequest, GenerateRequest
from radixlm.server.state import ServerState
from radixlm.server.worker_api import parallel_sizes

router = APIRouter()


EMPTY_200: dict[int | str, dict[str, Any]] = {200: {"description": "OK, no body", "content": {}}}


def sse(obj: Any) -> str:
    """One server-sent event carrying `obj` as JSON."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _state(request: Request) -> ServerState:
    return request.app.state.server


def _prompts(state: ServerState, body: GenerateRequest) -> tuple[list[list[int]], bool, str]:
    """Token ids of every prompt, whether a single one was sent, and the field it came in."""
    if (body.text is None) == (body.input_ids is None):
        raise ApiError(400, "give exactly one of text and input_ids", param="text")
    if body.text is not None:
        single = isinstance(body.text, str)
        texts = [body.text] if single else body.text
        if not texts:
            raise ApiError(400, "text: the list of prompts is empty", param="text")
        for t in texts:
            state.check_text_size(len(t), "text")
        return [state.tokenizer.encode(t) for t in texts], single, "text"
    ids = body.input_ids or []
    single = not ids or isinstance(ids[0], int)
    batch = [ids] if single else ids
    vocab = state.info.vocab_size
    if any(not 0 <= t < vocab for seq in batch for t in seq):
        raise ApiError(400, f"input_ids: token ids must be in [0, {vocab})", param="input_ids")
    return batch, single, "input_ids"


def _per_prompt(value: Any, n: int, field: str, kind: type) -> list[Any]:
    """`value` once per prompt: a list must have one entry each, a single value is repeated."""
    if isinstance(value, list):
        if len(value) != n:
            raise ApiError(400, f"{field}: one entry per prompt ({n})", param=field)
        return value
    if value is not None and not isinstance(value, kind):
        raise ApiError(400, f"{field}: wrong type", param=field)
    if field == "rid" and value is not None and n > 1:
        raise ApiError(400, "rid: give a list with one rid per prompt", param="rid")
    return [value] * n


def sglang_prompt_logprobs(meta: dict[str, Any], logprob_start_len: int) -> dict[str, Any]:
    """`meta` with SGLang's null at the first prompt-logprob entry; returns `meta` (changed).

    SGLang scores prompt tokens only from the position after `logprob_start_len`: the
    entry of the token at `logprob_start_len` itself carries a null logprob (and null top
    logprobs), wherever it starts. Clients average the non-null entries (the frontend's
    `select`), so the same entries must be null here to give SGLang's numbers.
    """
    entries = meta.get("input_token_logprobs")
    if logprob_start_len > 0 and entries:
        entries[0] = [None, *entries[0][1:]]
        tops = meta.get("input_top_logprobs")
        if tops:
            tops[0] = None
    return meta


@router.api_route("/generate", methods=["POST", "PUT"])
async def generate(request: Request, body: GenerateRequest) -> Response:
    """SGLang's /generate: a result object (a list for a list input), or an SSE stream."""
    state = _state(request)
    client = state.engine()
    prompts, single, param = await state.off_loop(_prompts, state, body)
    sampling = _per_prompt(body.sampling_params, len(prompts), "sampling_params", dict)
    rids = _per_prompt(body.rid, len(prompts), "rid", str)
    lp = RequestOptions(
        return_logprob=bool(body.return_logprob),
        logprob_start_len=-1 if body.logprob_start_len is None else body.logprob_start_len,
        top_logprobs_num=body.top_logprobs_num or 0,
        return_text_in_logprobs=bool(body.return_text_in_logprobs),
        cache_salt=body.cache_salt,
    )
    msgs = plan(state, prompts, [s or {} for s in sampling], rids, lp, param,
                caller=caller_of(request))  # fmt: skip
    if body.stream:
        return StreamingResponse(_stream(state, msgs), media_type="text/event-stream")
    results = await collect_unless_gone(request, client, msgs)
    for r in results:
        sglang_prompt_logprobs(r["meta_info"], lp.logprob_start_len)
    return JSONResponse(results[0] if single and len(results) == 1 else results)


async def _stream(state: ServerState, msgs: list) -> AsyncIterator[str]:
    """SSE events with cumulative text and ids per request (tagged `index` for batches)."""
    text = [""] * len(msgs)
    ids: list[list[int]] = [[] for _ in msgs]
    async for i, chunk in merged(state.engine(), msgs):
        if isinstance(chunk, ApiError):
            yield sse(error_body(chunk.message, chunk.type, chunk.param) | {"index": i})
            continue
        text[i] += chunk.text_delta
        ids[i] += chunk.new_ids
        meta = dict(chunk.meta_info)
        if chunk.output_logprobs is not None:
            meta["output_token_logprobs"] = chunk.output_logprobs
        if chunk.final_logprobs is not None:
            meta |= {k: v for k, v in chunk.final_logprobs.items() if "output" not in k}
            sglang_prompt_logprobs(meta, msgs[i].logprob_start_len)
        out = {"text": text[i], "output_ids": list(ids[i]), "meta_info": meta}
        if len(msgs) > 1:
            out["index"] = i
        yield sse(out)
    yield "data: [DONE]\n\n"


@router.get("/health", response_class=Response, responses=EMPTY_200)
async def health(request: Request) -> Response:
    """200 while serving; 503 while starting, stopping, or if the engine died."""
    state = _state(request)
    state.engine()
    return Response(status_code=200)


@router.get("/health_generate", response_class=Response, responses=EMPTY_200)
async def health_generate(request: Request) -> Response:
    """200 after a one-token generation succeeds; 503 if it does not within 20 s."""
    state = _state(request)
    client = state.engine()
    ids = state.tokenizer.encode("hi") or [0]
    msgs = plan(state, [ids], [{"max_new_tokens": 1}], [None], RequestOptions(), "text")
    try:
        await asyncio.wait_for(collect(client, msgs[0]), 20)
    except TimeoutError:
        raise ApiError(503, "the engine did not answer a one-token request in 20 s") from None
    return Response(status_code=200)


def tokenizer_path(state: ServerState) -> str:
    """A directory `AutoTokenizer.from_pretrained` loads, else the model's path.

    For an HF model directory that is the directory itself; for a GGUF file, the folder
    its converted tokenizer was read from (radixlm's tokenizer cache) when there is one.
    Clients such as SGLang's `bench_serving` load their tokenizer from this path.
    """
    name = getattr(state.tokenizer.hf_tokenizer, "name_or_path", "") or ""
    if name and (Path(name) / "tokenizer_config.json").is_file():
        return name
    return state.info.model_path


@router.get("/get_model_info")
@router.get("/model_info")
async def get_model_info(request: Request) -> dict[str, Any]:
    """SGLang's model info (`model_path`, `tokenizer_path`, `is_generation`, ...) plus the
    chat template (Jinja) and eos token text, from which `radixlm.lang` writes role turns.

    SGLang's frontend picks its chat template from `model_path`; its `bench_serving`
    loads a tokenizer from `tokenizer_path`.
    """
    state = _state(request)
    return {
        "model_path": state.info.model_path,
        "tokenizer_path": tokenizer_path(state),
        "is_generation": True,
        "served_model_name": state.model_name,
        "model_type": state.info.architecture,
        "preferred_sampling_params": None,
        "has_image_understanding": False,
        "has_audio_understanding": False,
        "chat_template": state.tokenizer.chat_template,
        "eos_token": state.tokenizer.hf_tokenizer.eos_token,
    }


@router.get("/get_server_info")
@router.get("/server_info")
async def get_server_info(request: Request) -> dict[str, Any]:
    """The server's configuration, the model, and the engine's live statistics."""
    state = _state(request)
    stats = await state.engine().call("get_stats")
    return {
        **state.cfg.engine.options(),
        "host": state.cfg.host,
        "port": state.cfg.port,
        "served_model_name": state.model_name,
        **dataclasses.asdict(state.info),
        "engine_pid": state.info.pid,
        "version": radixlm.__version__,
        **parallel_sizes(state),
        **stats,
    }


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    """Prometheus text format: the engine's counters and gauges, and request latencies."""
    state = _state(request)
    stats = await state.engine().call("get_stats")
    return Response(state.metrics.render(stats), media_type=CONTENT_TYPE_LATEST)


@router.get("/ready", response_class=Response, responses=EMPTY_200)
async def ready(request: Request) -> Response:
    """200 once the server takes requests; 503 while starting or stopping (SGLang's /ready)."""
    _state(request).engine()
    return Response(status_code=200)


FLUSH_RETRY_S = 0.05  # how often a flush with a timeout asks again while requests run


@router.api_route("/flush_cache", methods=["GET", "POST"])
async def flush_cache(
    request: Request, timeout: float = Query(0.0, ge=0.0, le=3600.0)
) -> dict[str, Any]:
    """Empty the prefix cache; 400 while requests are in flight.

    With `timeout` (seconds, SGLang's query parameter) it waits up to that long for the
    requests in flight to finish before giving up with 400.
    """
    client = _state(request).engine()
    deadline = time.monotonic() + timeout
    while not await client.call("flush_cache"):
        if time.monotonic() >= deadline:
            raise ApiError(400, "cannot flush the cache while requests are queued or running")
        await asyncio.sleep(FLUSH_RETRY_S)
    return {"success": True, "message": "the prefix cache was flushed"}


@router.post("/abort_request")
async def abort_request(request: Request, body: AbortRequest) -> dict[str, Any]:
    """Abort request `rid` (and its n samples), or every request with `abort_all`: a tenant
    key reaches only its own tenant's requests."""
    if body.rid is None and not body.abort_all:
        raise ApiError(400, "give rid or abort_all: true", param="rid")
    rid = None if body.abort_all else body.rid
    _state(request).engine().abort_as(rid, caller_of(request).tenant)
    return {"success": True}
