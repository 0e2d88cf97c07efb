"""Small routes clients call: /tokenize, /detokenize (vLLM's and SGLang's shapes) and
/v1/models/{model}."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field

from radixlm.server.chat_request import chat_prompt
from radixlm.server.errors import ApiError
from radixlm.server.protocol import ChatCompletionRequest, ChatMessage, ToolDef, _Body
from radixlm.server.state import ServerState
from radixlm.server.tools.request import ToolRequest

router = APIRouter()

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "a bad field, named in `error.param`"},
    404: {"description": "another model than this server's (`model_not_found`)"},
}


class TokenizeRequest(_Body):
    """Either `prompt` (text) or `messages` (rendered by the chat template, with `tools`)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    tools: list[ToolDef] | None = None
    add_special_tokens: bool = True  # text only: add the model's bos and the like
    add_generation_prompt: bool = True  # messages only (the assistant turn is opened)
    return_token_strs: bool = False


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[int]
    skip_special_tokens: bool = False


def model_card(state: ServerState) -> dict[str, Any]:
    """The served model in OpenAI's model shape."""
    return {
        "id": state.model_name,
        "object": "model",
        "created": int(state.started_at),
        "owned_by": "radixlm",
        "root": state.info.model_path,
        "max_model_len": state.max_request_tokens,
    }


@router.get("/v1/models/{model:path}", responses={404: ERRORS[404]})
async def retrieve_model(request: Request, model: str) -> dict[str, Any]:
    """The model called `model` (this server's name or path); 404 for any other."""
    state: ServerState = request.app.state.server
    state.check_model(model)
    return model_card(state)


def _tokenize(state: ServerState, body: TokenizeRequest) -> list[int]:
    if (body.prompt is None) == (body.messages is None):
        raise ApiError(400, "prompt: give exactly one of prompt or messages", param="prompt")
    if body.prompt is not None:
        state.check_text_size(len(body.prompt), "prompt")
        return state.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
    chat = ChatCompletionRequest(messages=body.messages, tools=body.tools)
    return chat_prompt(state, chat, ToolRequest.from_body(chat), body.add_generation_prompt)


@router.post("/tokenize", responses={400: ERRORS[400], 404: ERRORS[404]})
async def tokenize(request: Request, body: TokenizeRequest) -> dict[str, Any]:
    """`{"tokens", "count", "max_model_len"}` (and `token_strs` when asked) of a text or of
    chat messages as the chat template renders them."""
    state: ServerState = request.app.state.server
    state.check_model(body.model)
    ids = await state.off_loop(_tokenize, state, body)
    out: dict[str, Any] = {"tokens": ids, "count": len(ids),
                           "max_model_len": state.max_request_tokens}  # fmt: skip
    if body.return_token_strs:
        out["token_strs"] = state.tokenizer.hf_tokenizer.convert_ids_to_tokens(ids)
    return out


@router.post("/detokenize", responses={400: ERRORS[400], 404: ERRORS[404]})
async def detokenize(request: Request, body: DetokenizeRequest) -> dict[str, Any]:
    """`{"prompt", "text"}`: the text of `tokens` (vLLM calls it prompt, SGLang text)."""
    state: ServerState = request.app.state.server
    state.check_model(body.model)
    vocab = state.info.vocab_size
    if any(not 0 <= t < vocab for t in body.tokens):
        raise ApiError(400, f"tokens: token ids must be in [0, {vocab})", param="tokens")
    text = state.tokenizer.decode(body.tokens, skip_special_tokens=body.skip_special_tokens)
    return {"prompt": text, "text": text}
