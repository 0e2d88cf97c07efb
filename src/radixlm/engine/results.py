"""The one result shaper: a step's output for a request -> the chunk its caller receives.

It runs on the loop thread, right after the step, so every chunk is a consistent
snapshot: its text delta, new ids, logprob entries and counts describe exactly
the tokens of that step. Both doors receive these chunks (`ChunkMsg`, or
`ErrorMsg` for a request that failed) and build SGLang's result with `result_of`.
"""

from __future__ import annotations

import time
from typing import Any

from radixlm.engine.messages import ChunkMsg, ErrorMsg, GenerateMsg
from radixlm.scheduler.request import Req, StepOutput
from radixlm.tokenizer import Tokenizer

Entry = list[Any]  # [logprob, token_id, text_or_null]


def request_meta(r: Req) -> dict[str, Any]:
    """SGLang's `meta_info` counts for a request, as of now (finish_reason None while running).

    With logprobs, `output_token_logprobs_length` counts the output entries so far
    (a streamed chunk carries only its own entries).
    """
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
    if r.return_logprob:
        meta["output_token_logprobs_length"] = len(r.output_logprobs)
    return meta


class ResultShaper:
    """Turns step outputs into chunks; knows each live request's logprob options.

    `start(msg)` when a request is queued; `shape(out)` after each step (it forgets
    the request once it finished). Use on the loop thread only.
    """

    def __init__(self, tokenizer: Tokenizer | None) -> None:
        self.tokenizer = tokenizer
        self._with_text: dict[str, bool] = {}  # rid -> return_text_in_logprobs
        self._sent_lp: dict[str, int] = {}  # rid -> output logprob entries already sent

    def start(self, msg: GenerateMsg) -> None:
        self._with_text[msg.rid] = msg.return_text_in_logprobs
        self._sent_lp[msg.rid] = 0

    def unfinished(self) -> list[str]:
        """Rids started and not yet shaped a finish for: the requests a caller still awaits."""
        return list(self._with_text)

    def shape(self, out: StepOutput) -> ChunkMsg | ErrorMsg:
        """The chunk of `out`, or the error of a request whose batch failed."""
        r = out.req
        reason = r.finish_reason
        if out.finished and reason is not None and reason.is_error:
            self._forget(r.rid)
            return ErrorMsg(r.rid, reason.message or "internal error", reason.status_code or 500)
        chunk = ChunkMsg(r.rid, out.text, list(out.new_ids), out.finished, request_meta(r))
        if r.return_logprob:
            start = self._sent_lp.get(r.rid, 0)
            chunk.output_logprobs = self._entries(r.rid, r.output_logprobs[start:])
            tops = r.output_top_logprobs[start:]
            chunk.output_top_logprobs = [self._entries(r.rid, t or []) for t in tops]
            self._sent_lp[r.rid] = len(r.output_logprobs)
        if out.finished:
            if r.return_logprob:
                chunk.final_logprobs = self._final_logprobs(r)
            self._forget(r.rid)
        return chunk

    def _forget(self, rid: str) -> None:
        self._with_text.pop(rid, None)
        self._sent_lp.pop(rid, None)

    def _final_logprobs(self, r: Req) -> dict[str, Any]:
        top = [None if t is None else self._entries(r.rid, t) for t in r.input_top_logprobs]
        out_top = [None if t is None else self._entries(r.rid, t) for t in r.output_top_logprobs]
        return {
            "input_token_logprobs": self._entries(r.rid, r.input_logprobs),
            "output_token_logprobs": self._entries(r.rid, r.output_logprobs),
            "input_top_logprobs": top,
            "output_top_logprobs": out_top,
        }

    def _entries(self, rid: str, pairs: list[tuple[float | None, int]]) -> list[Entry]:
        tok = self.tokenizer if self._with_text.get(rid) else None
        return [
            [lp, tid, None if tok is None else tok.decode([tid], skip_special_tokens=False)]
            for lp, tid in pairs
        ]


def result_of(text: str, ids: list[int], last: ChunkMsg) -> dict[str, Any]:
    """SGLang's result object from the accumulated text, ids and the finishing chunk."""
    meta = dict(last.meta_info)
    if last.final_logprobs is not None:
        meta.update(last.final_logprobs)
    return {"text": text, "output_ids": ids, "meta_info": meta}
