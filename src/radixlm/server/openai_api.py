"""OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from radixlm.engine.messages import GenerateMsg
from radixlm.engine.requests import RequestOptions
from radixlm.server.chat_output import ChoiceOutput, chat_delta
from radixlm.server.chat_request import chat_prompt, choice_outputs, tool_sampling
from radixlm.server.dispatch import collect_unless_gone, merged, plan
from radixlm.server.errors import ApiError, error_body
from radixlm.server.guards import caller_of
from radixlm.server.native_api import sse
from radixlm.server.openai_format import (
    chat_logprobs,
    completion_logprobs,
    echo_logprobs,
    finish_reason,
    usage,
)
from radixlm.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ResponseFormat,
    _OpenAISampling,
)
from radixlm.server.state import ServerState
from radixlm.server.tools.request import ToolRequest
from radixlm.server.util_api import model_card

router = APIRouter()

# SGLang sampling field -> the OpenAI request field, for error messages.
FIELD_NAMES = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens", "seed": "seed"}


def _sampling(body: _OpenAISampling, max_new_tokens: int) -> dict[str, Any]:
    """SGLang sampling params from an OpenAI body (None means the default)."""
    return {
        "max_new_tokens": max_new_tokens,
        "min_new_tokens": body.min_tokens,
        "n": body.n,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "min_p": body.min_p,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "repetition_penalty": body.repetition_penalty,
        "stop": body.stop,
        "stop_token_ids": body.stop_token_ids,
        "seed": body.seed,
        "logit_bias": body.logit_bias,
        "ignore_eos": body.ignore_eos,
        "skip_special_tokens": body.skip_special_tokens,
        "regex": body.regex,
        "json_schema": body.json_schema,
        "ebnf": body.ebnf,
        **_response_format(body.response_format),
    }


def _response_format(fmt: ResponseFormat | None) -> dict[str, Any]:
    """`response_format` as a sampling constraint: any JSON object, or a given schema."""
    if fmt is None or fmt.type == "text":
        return {}
    if fmt.type == "json_object":
        return {"json_schema": {"type": "object"}}
    if fmt.json_schema is None:
        raise ApiError(400, "response_format.json_schema: required when type is json_schema",
                       param="response_format.json_schema")  # fmt: skip
    return {"json_schema": fmt.json_schema.schema_}


def _field_names(body: _OpenAISampling) -> dict[str, str]:
    """Sampling field -> request field for error messages (a schema may be response_format)."""
    fmt = body.response_format
    if fmt is not None and fmt.type != "text" and body.json_schema is None:
        return {**FIELD_NAMES, "json_schema": "response_format"}
    return FIELD_NAMES


def _max_tokens(state: ServerState, requested: int | None, prompts: list[list[int]]) -> int:
    """`requested`, or by default --default-max-tokens within the room the longest prompt
    leaves."""
    if requested is not None:
        return requested
    room = max(state.max_request_tokens - max(len(p) for p in prompts), 0)
    return min(state.cfg.default_max_tokens, room)


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The one served model, in OpenAI's list shape."""
    state: ServerState = request.app.state.server
    return {"object": "list", "data": [model_card(state)]}


def _completion_prompts(state: ServerState, prompt: Any) -> list[list[int]]:
    """Token ids of each prompt in a completions request; 400 for an empty one."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise ApiError(400, "prompt: the prompt is empty", param="prompt")
    if isinstance(prompt[0], int):
        prompt = [prompt]
    out = []
    vocab = state.info.vocab_size
    for p in prompt:
        if isinstance(p, str):
            if not p:
                raise ApiError(400, "prompt: the prompt is empty", param="prompt")
            state.check_text_size(len(p), "prompt")
            out.append(state.tokenizer.encode(p))
        else:
            if any(not 0 <= t < vocab for t in p):
                raise ApiError(400, f"prompt: token ids must be in [0, {vocab})", param="prompt")
            out.append(list(p))
    return out


def _echoed(state: ServerState, body: CompletionRequest, prompts: list[list[int]]) -> list[str]:
    """Per choice (n per prompt): the prompt text `echo` puts before the completion."""
    if not body.echo:
        return [""] * (len(prompts) * body.n)
    raw = body.prompt
    texts = raw if isinstance(raw, list) and raw and isinstance(raw[0], str) else None
    if isinstance(raw, str):
        texts = [raw]
    if texts is None:
        texts = [state.tokenizer.decode(p, skip_special_tokens=False) for p in prompts]
    return [t for t in texts for _ in range(body.n)]


@router.post("/v1/completions")
async def completions(request: Request, body: CompletionRequest) -> Response:
    """OpenAI text completions: one choice per prompt and sample, or an SSE stream."""
    state: ServerState = request.app.state.server
    client = state.engine()
    state.check_model(body.model)
    if body.echo and body.stream and body.logprobs is not None:
        raise ApiError(400, "echo: prompt logprobs are not streamed; drop stream or logprobs",
                       param="echo")  # fmt: skip
    if body.suffix:
        raise ApiError(400, "suffix: not supported", param="suffix")
    prompts = await state.off_loop(_completion_prompts, state, body.prompt)
    sp = _sampling(body, _max_tokens(state, body.max_tokens, prompts))
    lp = RequestOptions(
        return_logprob=body.logprobs is not None,
        logprob_start_len=0 if body.echo else -1,  # echo: the prompt's logprobs too
        top_logprobs_num=body.logprobs or 0,
        return_text_in_logprobs=True,
        cache_salt=body.cache_salt,
    )
    echoed = _echoed(state, body, prompts)
    msgs = plan(state, prompts, [sp] * len(prompts), [None] * len(prompts), lp, "prompt",
                _field_names(body), caller_of(request))  # fmt: skip
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": rid, "object": "text_completion", "created": created, "model": state.model_name}
    if body.stream:
        events = _stream(state, msgs, head, body, chat=False, echoed=echoed)
        return StreamingResponse(events, media_type="text/event-stream")
    results = await collect_unless_gone(request, client, msgs)
    lp_of = echo_logprobs if body.echo else (lambda meta: meta)
    choices = [
        {
            "index": i,
            "text": echoed[i] + r["text"],
            "logprobs": completion_logprobs(lp_of(r["meta_info"])) if lp.return_logprob else None,
            "finish_reason": finish_reason(r["meta_info"]),
        }
        for i, r in enumerate(results)
    ]
    return JSONResponse({**head, "choices": choices, "usage": usage(results, body.n)})


def _chat_prompt(state: ServerState, body: ChatCompletionRequest, tools: ToolRequest
                 ) -> list[int]:  # fmt: skip
    """The prompt ids the chat template makes of the messages and tools; 400 when it cannot."""
    return chat_prompt(state, body, tools)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
    """OpenAI chat completions with the model's chat template applied."""
    state: ServerState = request.app.state.server
    client = state.engine()
    state.check_model(body.model)
    state.check_text_size(sum(len(str(m.content or "")) for m in body.messages), "messages")
    tools = ToolRequest.from_body(body)
    ids = await state.off_loop(_chat_prompt, state, body, tools)
    requested = body.max_completion_tokens or body.max_tokens
    sp = _sampling(body, _max_tokens(state, requested, [ids]))
    sp.update(tool_sampling(state, body, tools))
    lp = RequestOptions(
        return_logprob=bool(body.logprobs),
        top_logprobs_num=(body.top_logprobs or 0) if body.logprobs else 0,
        return_text_in_logprobs=True,
        cache_salt=body.cache_salt,
    )
    msgs = plan(state, [ids], [sp], [None], lp, "messages", _field_names(body),
                caller_of(request))  # fmt: skip
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": rid, "object": "chat.completion", "created": created, "model": state.model_name}
    outputs = choice_outputs(state, body, tools, len(msgs))
    if body.stream:
        head["object"] = "chat.completion.chunk"
        events = _stream(state, msgs, head, body, chat=True, outputs=outputs)
        return StreamingResponse(events, media_type="text/event-stream")
    results = await collect_unless_gone(request, client, msgs)
    choices = [
        {
            "index": i,
            "message": out.message(r["text"]),
            "logprobs": chat_logprobs(r["meta_info"]) if lp.return_logprob else None,
            "finish_reason": out.finish_reason(finish_reason(r["meta_info"])),
        }
        for i, (r, out) in enumerate(zip(results, outputs, strict=True))
    ]
    return JSONResponse({**head, "choices": choices, "usage": usage(results, body.n)})


async def _stream(
    state: ServerState, msgs: list[GenerateMsg], head: dict, body: _OpenAISampling, chat: bool,
    outputs: list[ChoiceOutput] | None = None, echoed: list[str] | None = None,
) -> AsyncIterator[str]:
    """SSE chunks in OpenAI's streaming shape, then usage if asked, then `[DONE]`.

    Chat chunks carry what each choice's `ChoiceOutput` made of the text (content,
    reasoning, tool-call fragments); a chunk with nothing to say is not sent."""
    if chat:
        for i in range(len(msgs)):
            choice = {"index": i, "delta": {"role": "assistant", "content": ""},
                      "logprobs": None, "finish_reason": None}  # fmt: skip
            yield sse({**head, "choices": [choice]})
    finals: list[dict[str, Any]] = [{} for _ in msgs]
    async for i, chunk in merged(state.engine(), msgs):
        if isinstance(chunk, ApiError):
            yield sse(error_body(chunk.message, chunk.type, chunk.param))
            continue
        meta = chunk.meta_info
        finals[i] = {"meta_info": meta}
        lp_meta = {"output_token_logprobs": chunk.output_logprobs or [],
                   "output_top_logprobs": chunk.output_top_logprobs}  # fmt: skip
        choice: dict[str, Any] = {"index": i, "finish_reason": finish_reason(meta)}
        if chat:
            assert outputs is not None
            choice["delta"], choice["finish_reason"] = chat_delta(outputs[i], chunk.text_delta,
                                                                  choice["finish_reason"])
            choice["logprobs"] = chat_logprobs(lp_meta) if msgs[i].return_logprob else None
            if not (choice["delta"] or choice["logprobs"] or choice["finish_reason"]):
                continue
        else:
            choice["text"] = (echoed[i] if echoed else "") + chunk.text_delta
            if echoed:
                echoed[i] = ""  # the prompt comes once, before the choice's first text
            logprobs = completion_logprobs(lp_meta) if msgs[i].return_logprob else None
            choice["logprobs"] = logprobs
        yield sse({**head, "choices": [choice]})
    if body.stream_options is not None and body.stream_options.include_usage:
        yield sse({**head, "choices": [], "usage": usage([f for f in finals if f], body.n)})
    yield "data: [DONE]\n\n"
