"""The offline door's two ends: calls -> requests (tokenizing text prompts), and a request's
chunks -> the caller's dicts (`RequestHandle`)."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

from radixlm.engine.messages import ChunkMsg, ErrorMsg, GenerateMsg
from radixlm.engine.requests import RequestOptions, build_requests
from radixlm.engine.results import result_of
from radixlm.sampling.params import SamplingParams
from radixlm.tokenizer import Tokenizer

Prompt = str | list[str] | None


class EngineError(RuntimeError):
    """The engine failed while running a request (its batch's step raised), or stopped."""


def _prompts(
    tokenizer: Tokenizer | None, prompt: Prompt, input_ids: Any
) -> tuple[list[list[int]], bool]:
    """Token ids of every prompt, and whether the caller passed a single one."""
    if (prompt is None) == (input_ids is None):
        raise ValueError("give exactly one of prompt (text) and input_ids")
    if input_ids is not None:
        if not input_ids:
            raise ValueError("input_ids: the prompt is empty")
        single = isinstance(input_ids[0], int)
        batch = [input_ids] if single else input_ids
        return [list(map(int, ids)) for ids in batch], single
    if tokenizer is None:
        raise ValueError("text prompts need a tokenizer (the engine skipped it): pass input_ids")
    single = isinstance(prompt, str)
    texts = [prompt] if single else prompt
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ValueError("prompt must be a string or a list of strings")
    return [tokenizer.encode(t) for t in texts], single


def expand_requests(
    tokenizer: Tokenizer | None,
    prompt: Prompt,
    input_ids: Any,
    sampling_params: dict[str, Any] | SamplingParams | None,
    options: dict[str, Any],
    vocab_size: int,
) -> tuple[list[GenerateMsg], bool]:
    """The requests of one `Engine.generate` call (see `engine.requests.build_requests`).

    `options`: rid (one, or one per prompt) and the `RequestOptions` fields.
    Returns (requests, single). Raises ValueError naming a bad field, TypeError for an
    unknown option.
    """
    options = dict(options)
    rids = options.pop("rid", None)
    opts = RequestOptions(**options)  # TypeError names an unknown option
    params = sampling_params
    if not isinstance(params, SamplingParams):
        params = SamplingParams.from_dict(params or {})
    prompts, single = _prompts(tokenizer, prompt, input_ids)
    if rids is None or isinstance(rids, str):
        rids = [rids] * len(prompts)
    return build_requests(prompts, [params] * len(prompts), rids, opts, vocab_size), single


class RequestHandle:
    """The caller's side of one request: the chunks the loop sent, and its result.

    The loop thread `push`es chunks; one caller thread reads them (`chunks`, `wait`).
    """

    def __init__(self, msg: GenerateMsg) -> None:
        self.rid = msg.rid
        self.return_logprob = msg.return_logprob
        self._events: queue.SimpleQueue[ChunkMsg | ErrorMsg | BaseException] = (
            queue.SimpleQueue()
        )
        self.done = False
        self.text = ""
        self.output_ids: list[int] = []
        self.last: ChunkMsg | None = None

    def push(self, item: ChunkMsg | ErrorMsg | BaseException) -> None:
        self._events.put(item)

    def chunks(self) -> Iterator[dict[str, Any]]:
        """Yield one chunk per step until the request finishes.

        Raises ValueError when the engine refused the request, EngineError when it failed.
        """
        while not self.done:
            event = self._events.get()
            if isinstance(event, BaseException | ErrorMsg):
                self.done = True
                if isinstance(event, BaseException):
                    raise event
                raise (ValueError if event.status < 500 else EngineError)(event.message)
            self.text += event.text_delta
            self.output_ids += event.new_ids
            self.done, self.last = event.finished, event
            meta = dict(event.meta_info)
            if self.return_logprob:
                meta["output_token_logprobs"] = event.output_logprobs or []
            yield {
                "text_delta": event.text_delta,
                "text": self.text,
                "output_ids": event.new_ids,
                "finished": event.finished,
                "meta_info": meta,
            }

    def wait(self) -> dict[str, Any]:
        """Block until the request finishes; return `{"text", "output_ids", "meta_info"}`."""
        for _ in self.chunks():
            pass
        assert self.last is not None
        return result_of(self.text, list(self.output_ids), self.last)
