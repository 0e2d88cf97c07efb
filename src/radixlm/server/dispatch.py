"""Send validated API calls to the engine as requests, and gather their chunks into results.

Shared by the native and the OpenAI routes: `plan` is the server's thin adapter over
the engine's request builder (its errors become API errors under the API's field
names); `collect` runs one request to its end; `merged` streams
several at once, tagged with their index.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from radixlm.engine.client import EngineClient, EngineRequestError
from radixlm.engine.messages import ChunkMsg, GenerateMsg
from radixlm.engine.requests import RequestOptions, build_requests
from radixlm.engine.results import result_of
from radixlm.grammar import GrammarError
from radixlm.sampling.params import SamplingParams, SamplingParamsError
from radixlm.server.access import ADMIN, Caller, check_client_salt
from radixlm.server.errors import ApiError, sampling_error
from radixlm.server.state import ServerState


def plan(
    state: ServerState,
    prompts: list[list[int]],
    sampling: list[dict[str, Any]],
    rids: list[str | None],
    options: RequestOptions,
    prompt_param: str,
    names: dict[str, str] | None = None,
    caller: Caller = ADMIN,
) -> list[GenerateMsg]:
    """The engine requests of an API call (`engine.requests.build_requests`, n expanded),
    sent by `caller`: its tenant owns them and sets their cache namespace.

    Raises ApiError 400 naming the bad field (`names` maps sampling fields to the API's
    names; `prompt_param` names the prompt when one cannot fit), or 429 (`check_limits`).
    """
    try:
        check_client_salt(options.cache_salt)
        check_rids(rids)
    except ValueError as e:  # "field: why"
        raise ApiError(400, str(e), param=str(e).partition(":")[0]) from None
    options = dataclasses.replace(options, cache_salt=caller.cache_salt(options.cache_salt))
    try:
        params = [SamplingParams.from_dict(sp) for sp in sampling]
        msgs = build_requests(prompts, params, rids, options, state.info.vocab_size,
                              max_n=state.cfg.max_n)  # fmt: skip
    except SamplingParamsError as e:
        raise sampling_error(e, names) from None
    except GrammarError as e:
        field = (names or {}).get(e.field, e.field)
        raise ApiError(400, f"{field}: {e.reason}", param=field) from None
    for ids, p in zip(prompts, params, strict=True):
        state.check_length(ids, p.max_new_tokens, prompt_param)
    check_limits(state, msgs, prompt_param)
    for m in msgs:
        m.tenant = caller.tenant
    return msgs


def check_rids(rids: list[str | None]) -> None:
    """Raise ValueError("rid: ...") for a rid with control characters (they would forge log
    lines) or over 256 characters."""
    for rid in rids:
        if rid is not None and (len(rid) > 256 or not rid.isprintable()):
            raise ValueError("rid: at most 256 printable characters (no newlines or controls)")


def check_limits(state: ServerState, msgs: list[GenerateMsg], prompt_param: str) -> None:
    """400 past the per-call limits or for a rid already in flight, 429 when the queue is full."""
    cfg = state.cfg
    if len(msgs) > cfg.max_prompts_per_request:
        raise ApiError(400, f"{prompt_param}: {len(msgs)} prompts (times n) in one request, "
                       f"more than {cfg.max_prompts_per_request} (see --max-prompts-per-request)",
                       param=prompt_param)  # fmt: skip
    top = max((m.top_logprobs_num for m in msgs), default=0)
    if top > cfg.max_top_logprobs:
        raise ApiError(400, f"top_logprobs_num: at most {cfg.max_top_logprobs} (got {top}; "
                       "see --max-top-logprobs)", param="top_logprobs_num")  # fmt: skip
    live = state.client.queues if state.client is not None else {}
    rids = [m.rid for m in msgs]
    if len(set(rids)) < len(rids) or any(r in live for r in rids):
        raise ApiError(400, "rid: a request with this rid is already in flight", param="rid")
    room = cfg.engine.scheduler.max_running_requests + cfg.max_queued_requests - len(live)
    if len(msgs) > room:
        raise ApiError(429, f"the server is busy: {len(live)} requests in flight (see "
                       "--max-queued-requests); retry later", headers={"Retry-After": "1"})


def engine_error(e: EngineRequestError) -> ApiError:
    """The API error for a request the engine refused (400) or failed to run (500)."""
    return ApiError(e.status, str(e))


async def collect(client: EngineClient, msg: GenerateMsg) -> dict[str, Any]:
    """Run one request to its end; return `{"text", "output_ids", "meta_info"}`.

    Raises ApiError 400 when the engine refuses the request, 500 when it fails running it.
    """
    text, ids, last = "", [], None
    try:
        async for chunk in client.stream(msg):
            text += chunk.text_delta
            ids += chunk.new_ids
            last = chunk
    except EngineRequestError as e:
        raise engine_error(e) from None
    assert last is not None
    return result_of(text, ids, last)


async def collect_all(client: EngineClient, msgs: list[GenerateMsg]) -> list[dict[str, Any]]:
    """Run requests concurrently; results in order. A failure aborts the others."""
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(collect(client, m)) for m in msgs]
    except* ApiError as eg:
        raise eg.exceptions[0] from None
    return [t.result() for t in tasks]


async def _client_gone(request: Request) -> None:
    """Return once the HTTP client has disconnected (the body was already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def collect_unless_gone(
    request: Request, client: EngineClient, msgs: list[GenerateMsg]
) -> list[dict[str, Any]]:
    """`collect_all`, aborted when the HTTP client disconnects first; returns the results.

    Raises ApiError 499 after aborting the requests of a client that went away.
    """
    work = asyncio.create_task(collect_all(client, msgs))
    gone = asyncio.create_task(_client_gone(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        raise ApiError(499, "the client disconnected", "client_closed_request")
    finally:
        for task in (work, gone):
            if not task.done():
                task.cancel()  # cancelling `work` aborts its requests in the engine
                with contextlib.suppress(asyncio.CancelledError, ApiError):
                    await task


async def merged(
    client: EngineClient, msgs: list[GenerateMsg]
) -> AsyncIterator[tuple[int, ChunkMsg | ApiError]]:
    """Stream several requests at once: `(index, chunk)`, or `(index, ApiError)` when one
    is refused or fails.

    Leaving early (a dropped client) cancels the pumps, which aborts their requests.
    """
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    done = object()

    async def pump(i: int, msg: GenerateMsg) -> None:
        try:
            async for chunk in client.stream(msg):
                await queue.put((i, chunk))
        except EngineRequestError as e:
            await queue.put((i, engine_error(e)))
        finally:
            queue.put_nowait((i, done))

    tasks = [asyncio.create_task(pump(i, m)) for i, m in enumerate(msgs)]
    live = len(tasks)
    try:
        while live:
            i, item = await queue.get()
            if item is done:
                live -= 1
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
