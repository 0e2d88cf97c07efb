"""Programs on any OpenAI-compatible API, with the official `openai` client.

Chat models (`is_chat_model=True`, the default) get the program's finished turns as
`messages`; a `gen` must then be the whole of an assistant turn. Completion models get
the program's text as `prompt` (role turns written with `chat_template`, default plain).

`select` cannot score choices here (the API returns no prompt logprobs), so it works by
constrained choice done on the client: the model continues greedily for a few tokens and
the choice sharing the longest start with its answer is taken; `scores` in the meta info
are those shared-prefix lengths.
`regex` and `dtype` are sent as the `regex` extra field (servers that understand it, such
as SGLang and radixlm, enforce it) and checked on the answer: a server that ignored it
raises ConstrainedDecodingUnsupported. `json_schema` goes as `response_format`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

from radixlm.lang.backends.base import Backend, Context, GenOutput, RequestRecord
from radixlm.lang.chat_template import ChatTemplate, named_template, resolve_template
from radixlm.lang.errors import ConstrainedDecodingUnsupported, RequestError, is_constraint_refusal
from radixlm.lang.select import SelectResult

_STANDARD = {"max_new_tokens": "max_tokens", "stop": "stop", "temperature": "temperature",
             "top_p": "top_p", "frequency_penalty": "frequency_penalty",
             "presence_penalty": "presence_penalty"}  # fmt: skip
_EXTRA = ("top_k", "min_p", "ignore_eos", "stop_token_ids", "regex")
SELECT_MAX_TOKENS = 16


def _request_args(sampling_params: dict[str, Any]) -> dict[str, Any]:
    """OpenAI request arguments for SGLang-shaped `sampling_params`."""
    args = {_STANDARD[k]: v for k, v in sampling_params.items() if k in _STANDARD}
    extra = {k: sampling_params[k] for k in _EXTRA if k in sampling_params}
    if extra:
        args["extra_body"] = extra
    schema = sampling_params.get("json_schema")
    if schema is not None:
        args["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": json.loads(schema)},
        }
    return args


class OpenAI(Backend):
    """Run programs on `model` behind an OpenAI-compatible API at `base_url`."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        is_chat_model: bool = True,
        chat_template: ChatTemplate | str | None = None,
        record_requests: bool = False,
    ) -> None:
        import openai

        super().__init__(record_requests)
        self.model = model
        self.is_chat_model = is_chat_model
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "none")
        self._openai = openai
        self._template = resolve_template(chat_template, lambda: named_template("default"))

    @property
    def chat_template(self) -> ChatTemplate:
        return self._template

    # -- requests ------------------------------------------------------------------

    def _messages(self, ctx: Context) -> list[dict[str, str]]:
        if ctx.open_role != "assistant" or ctx.open_content:
            raise RequestError(
                "a chat model generates only a whole assistant turn: put the gen alone "
                "inside assistant(...)"
            )
        return [dict(m) for m in ctx.messages]

    def _create(self, ctx: Context, args: dict[str, Any]) -> Any:
        try:
            if self.is_chat_model:
                return self.client.chat.completions.create(
                    model=self.model, messages=self._messages(ctx), **args
                )
            return self.client.completions.create(model=self.model, prompt=ctx.text, **args)
        except self._openai.APIStatusError as e:
            body = e.body if isinstance(e.body, dict) else {}
            message = str(body.get("message") or e.message)
            error = RequestError(message, e.status_code)
            if is_constraint_refusal(message):
                error = ConstrainedDecodingUnsupported(message, e.status_code)
            raise error from e
        except self._openai.APIError as e:
            raise RequestError(str(e)) from e

    def _text(self, choice: Any) -> str:
        return (choice.message.content or "") if self.is_chat_model else choice.text

    def _record(self, kind: str, ctx: Context, usage: Any) -> dict[str, Any]:
        prompt = getattr(usage, "prompt_tokens", 0) or 0
        details = getattr(usage, "prompt_tokens_details", None)
        cached = (getattr(details, "cached_tokens", 0) or 0) if details else 0
        completion = getattr(usage, "completion_tokens", 0) or 0
        self.usage.add(RequestRecord(kind, ctx.text, prompt, cached, completion))
        return {"prompt_tokens": prompt, "cached_tokens": cached, "completion_tokens": completion}

    def generate(self, ctx: Context, sampling_params: dict[str, Any]) -> GenOutput:
        response = self._create(ctx, _request_args(sampling_params))
        text = self._text(response.choices[0])
        _check_regex(sampling_params, text)
        meta = self._record("gen", ctx, response.usage)
        meta["finish_reason"] = response.choices[0].finish_reason
        return GenOutput(text, meta)

    def generate_stream(self, ctx: Context, sampling_params: dict[str, Any]) -> Iterator[str]:
        args = _request_args(sampling_params)
        args.update(stream=True, stream_options={"include_usage": True})
        pieces: list[str] = []
        usage = None
        for chunk in self._create(ctx, args):
            usage = chunk.usage or usage
            if not chunk.choices:
                continue
            delta = chunk.choices[0]
            piece = (delta.delta.content or "") if self.is_chat_model else delta.text
            if piece:
                pieces.append(piece)
                yield piece
        text = "".join(pieces)
        _check_regex(sampling_params, text)
        return GenOutput(text, self._record("gen", ctx, usage))

    def select(self, ctx: Context, choices: list[str], method: str) -> SelectResult:
        """Constrained choice by greedy generation and matching (see the module docstring)."""
        params = {"max_new_tokens": SELECT_MAX_TOKENS, "temperature": 0}
        response = self._create(ctx, _request_args(params))
        answer = self._text(response.choices[0]).strip()
        self._record("select", ctx, response.usage)
        return match_choice(choices, answer)


def match_choice(choices: list[str], answer: str) -> SelectResult:
    """The choice sharing the longest start with `answer` (ties: the earlier choice)."""
    scores = [float(len(os.path.commonprefix([c, answer]))) for c in choices]  # noqa: RUF071
    index = max(range(len(choices)), key=lambda i: (scores[i], -i))
    return SelectResult(index, choices[index], scores, [[] for _ in choices])


def _check_regex(sampling_params: dict[str, Any], text: str) -> None:
    pattern = sampling_params.get("regex")
    if pattern is not None and re.fullmatch(pattern, text) is None:
        raise ConstrainedDecodingUnsupported(
            f"the server ignored the regex {pattern!r}: it answered {text!r}"
        )
