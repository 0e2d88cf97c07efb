"""Turn validated prompts into engine requests, and engine chunks into results.

Shared by the native and the OpenAI routes: `plan` checks sampling params and
lengths and expands n; `collect` runs one request to its end; `merged` streams
several at once, tagged with their index.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from radixlm.engine.client import EngineClient, EngineRequestError
from radixlm.engine.messages import ChunkMsg, GenerateMsg
from radixlm.grammar import GrammarError, validate_grammar
from radixlm.sampling.params import SamplingParams, SamplingParamsError
from radixlm.server.errors import ApiError, sampling_error
from radixlm.server.state import ServerState


@dataclass
class LogprobOptions:
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    return_text_in_logprobs: bool = False


def plan(
    state: ServerState,
    prompts: list[list[int]],
    sampling: list[dict[str, Any]],
    rids: list[str | None],
    lp: LogprobOptions,
    prompt_param: str,
    names: dict[str, str] | None = None,
    cache_salt: str | None = None,
) -> list[GenerateMsg]:
    """One GenerateMsg per prompt and sample (n expands to consecutive messages).

    Raises ApiError 400 naming the bad field (`names` maps sampling fields to the API's names).
    `cache_salt` becomes each request's cache namespace (`extra_key`).
    """
    msgs: list[GenerateMsg] = []
    for ids, sp, rid in zip(prompts, sampling, rids, strict=True):
        try:
            params = SamplingParams.from_dict(sp)
            params.check_vocab(int(state.info["vocab_size"]))
        except SamplingParamsError as e:
            raise sampling_error(e, names) from None
        if params.n > state.cfg.max_n:
            raise ApiError(400, f"n: at most {state.cfg.max_n} samples per request (got "
                           f"{params.n}; see --max-n)", param="n")  # fmt: skip
        if params.grammar is not None:
            check_grammar(params.grammar, names)
        if params.stop_regexes:
            raise ApiError(400, "stop_regex: not supported", param="stop_regex")
        state.check_length(ids, params.max_new_tokens, prompt_param)
        base = rid or uuid.uuid4().hex
        for i in range(params.n):
            one = {k: v for k, v in sp.items() if v is not None}
            one["n"] = 1
            if params.n > 1 and params.seed is not None:
                one.pop("sampling_seed", None)
                one["seed"] = params.seed + i
            msgs.append(
                GenerateMsg(
                    rid=base if params.n == 1 else f"{base}-{i}",
                    input_ids=ids,
                    sampling_params=one,
                    return_logprob=lp.return_logprob,
                    logprob_start_len=lp.logprob_start_len,
                    top_logprobs_num=lp.top_logprobs_num,
                    return_text_in_logprobs=lp.return_text_in_logprobs,
                    extra_key=cache_salt,
                )
            )
    return msgs


def check_grammar(grammar: tuple[str, str], names: dict[str, str] | None) -> None:
    """400 naming the field (under the API's name) when the grammar cannot be compiled."""
    field = (names or {}).get(grammar[0], grammar[0])
    try:
        validate_grammar(*grammar)
    except GrammarError as e:
        raise ApiError(400, f"{field}: {e.reason}", param=field) from None


def engine_error(e: EngineRequestError) -> ApiError:
    """The API error for a request the engine refused (400) or failed to run (500)."""
    return ApiError(e.status, str(e))


def result_of(text: str, ids: list[int], last: ChunkMsg) -> dict[str, Any]:
    """SGLang's result object from the accumulated text, ids and the finishing chunk."""
    meta = dict(last.meta_info)
    if last.final_logprobs is not None:
        meta.update(last.final_logprobs)
    return {"text": text, "output_ids": ids, "meta_info": meta}


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
