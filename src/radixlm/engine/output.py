"""Requests in (prompts -> Req objects) and results out (step outputs -> SGLang-shaped dicts)."""

from __future__ import annotations

import dataclasses
import queue
import time
import uuid
from collections.abc import Iterator
from typing import Any

from radixlm.config import ModelConfig
from radixlm.grammar import validate_grammar
from radixlm.sampling.params import SamplingParams
from radixlm.scheduler.request import Req
from radixlm.scheduler.scheduler import StepOutput
from radixlm.tokenizer import Tokenizer

Prompt = str | list[str] | None

REQUEST_OPTIONS = {
    "rid": None,
    "return_logprob": False,
    "logprob_start_len": -1,
    "top_logprobs_num": 0,
    "return_text_in_logprobs": False,
    "cache_salt": None,
}


def _as_params(sp: dict[str, Any] | SamplingParams | None) -> SamplingParams:
    if isinstance(sp, SamplingParams):
        return sp
    return SamplingParams.from_dict(sp or {})


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
    model_config: ModelConfig,
) -> tuple[list[Req], bool]:
    """Build the scheduler requests for a call: one per prompt, times n.

    Returns (requests, single). Raises ValueError naming a bad field.
    """
    unknown = set(options) - set(REQUEST_OPTIONS)
    if unknown:
        raise TypeError(f"unknown request option(s): {', '.join(sorted(unknown))}")
    opts = {**REQUEST_OPTIONS, **options}
    params = _as_params(sampling_params)
    if params.grammar is not None:
        validate_grammar(*params.grammar)  # GrammarError is a ValueError naming the field
    if params.stop_regexes:
        raise ValueError("sampling_params.stop_regex: not supported")
    params.check_vocab(model_config.vocab_size)
    prompts, single = _prompts(tokenizer, prompt, input_ids)
    rids = opts["rid"]
    if rids is None or isinstance(rids, str):
        rids = [rids] * len(prompts)
    if len(rids) != len(prompts):
        raise ValueError("rid: one per prompt")
    reqs = []
    for ids, rid in zip(prompts, rids, strict=True):
        base = rid or uuid.uuid4().hex
        for i in range(params.n):
            p = params
            if params.n > 1 and params.seed is not None:
                p = dataclasses.replace(params, seed=params.seed + i)
            reqs.append(
                Req(
                    rid=base if params.n == 1 else f"{base}-{i}",
                    input_ids=ids,
                    params=p,
                    extra_key=opts["cache_salt"],
                    return_logprob=bool(opts["return_logprob"]),
                    logprob_start_len=int(opts["logprob_start_len"]),
                    top_logprobs_num=int(opts["top_logprobs_num"] or 0),
                )
            )
    return reqs, single


def request_meta(r: Req) -> dict[str, Any]:
    """SGLang's `meta_info` counts for a request, as of now (finish_reason None while running)."""
    now = r.finished_at or time.perf_counter()
    meta: dict[str, Any] = {
        "id": r.rid,
        "finish_reason": r.finish_reason.to_dict() if r.finish_reason else None,
        "prompt_tokens": len(r.input_ids),
        "completion_tokens": len(r.output_ids),
        "cached_tokens": r.cached_tokens,
        "e2e_latency": now - r.created_at,
    }
    if r.first_token_at is not None:
        meta["ttft"] = r.first_token_at - r.created_at
    return meta


class RequestHandle:
    """The caller's side of one request: a queue of step outputs, and the result builder."""

    def __init__(self, req: Req, tokenizer: Tokenizer | None, options: dict[str, Any]) -> None:
        self.req = req
        self.rid = req.rid
        self.tokenizer = tokenizer
        self.with_text = bool(options.get("return_text_in_logprobs"))
        self._events: queue.SimpleQueue[StepOutput | BaseException] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self.done = False
        self.text = ""
        self.output_ids: list[int] = []
        self._sent_out_lp = 0

    def push(self, out: StepOutput) -> None:
        self._events.put(out)

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._events.put(error)

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def chunks(self) -> Iterator[dict[str, Any]]:
        """Yield one chunk per step output until the request finishes."""
        while not self.done:
            event = self._events.get()
            if isinstance(event, BaseException):
                self.done = True
                raise event
            self.text += event.text
            self.output_ids += event.new_ids
            self.done = event.finished
            meta = self.meta_info()
            lp = self.req.output_logprobs[self._sent_out_lp :]
            self._sent_out_lp = len(self.req.output_logprobs)
            if self.req.return_logprob:
                meta["output_token_logprobs"] = self._entries(lp)
            yield {
                "text_delta": event.text,
                "text": self.text,
                "output_ids": event.new_ids,
                "finished": event.finished,
                "meta_info": meta,
            }

    def wait(self) -> dict[str, Any]:
        """Block until the request finishes; return `{"text", "output_ids", "meta_info"}`."""
        for _ in self.chunks():
            pass
        meta = self.meta_info()
        if self.req.return_logprob:
            meta.update(self.logprob_meta())
        return {"text": self.text, "output_ids": list(self.req.output_ids), "meta_info": meta}

    def meta_info(self) -> dict[str, Any]:
        return request_meta(self.req)

    def logprob_meta(self) -> dict[str, Any]:
        r = self.req
        return {
            "input_token_logprobs": self._entries(r.input_logprobs),
            "output_token_logprobs": self._entries(r.output_logprobs),
            "input_top_logprobs": [self._top(t) for t in r.input_top_logprobs],
            "output_top_logprobs": [self._top(t) for t in r.output_top_logprobs],
        }

    def _entries(self, pairs: list[tuple[float | None, int]]) -> list[list[Any]]:
        return [[lp, tid, self._text(tid)] for lp, tid in pairs]

    def _top(self, top: list[tuple[float, int]] | None) -> list[list[Any]] | None:
        return None if top is None else self._entries(top)

    def _text(self, token_id: int) -> str | None:
        if not self.with_text or self.tokenizer is None:
            return None
        return self.tokenizer.decode([token_id], skip_special_tokens=False)
