"""Decide when a request ends, and stream its text (stop strings are matched on text)."""

from __future__ import annotations

from radixlm.detokenizer import TextStream
from radixlm.scheduler.request import FinishReason, Req
from radixlm.tokenizer import Tokenizer


class Finisher:
    """Per-request text streams and the stop rules, in this order after each new token:

    a stop string in the text, a stop token id, an eos token (unless
    `ignore_eos`), `max_new_tokens` reached, the context length reached.
    Without a tokenizer there is no text and no stop-string matching.
    """

    def __init__(
        self, tokenizer: Tokenizer | None, eos_token_ids: tuple[int, ...], context_length: int
    ) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.context_length = context_length
        self._streams: dict[str, TextStream] = {}

    def start(self, req: Req) -> None:
        """Open the request's text stream (call once, when it is queued)."""
        if self.tokenizer is None:
            return
        p = req.params
        self._streams[req.rid] = TextStream(
            self.tokenizer,
            p.stop_strings,
            skip_special_tokens=p.skip_special_tokens,
            no_stop_trim=p.no_stop_trim,
            prompt_ids=req.input_ids[-8:],
        )

    def check(self, req: Req, token: int) -> str:
        """Account for the newly appended `token`: return its text; finish `req` if it must stop."""
        text = ""
        stream = self._streams.get(req.rid)
        if stream is not None:
            step = stream.add([token])
            text = step.text
            if step.stop is not None:
                req.finish(FinishReason("stop", matched=step.stop))
                return text
        p = req.params
        if token in p.stop_ids or (not p.ignore_eos and token in self.eos_token_ids):
            req.finish(FinishReason("stop", matched=token))
        elif len(req.output_ids) >= p.max_new_tokens:
            req.finish(FinishReason("length", length=p.max_new_tokens))
        elif len(req.input_ids) + len(req.output_ids) >= self.context_length:
            req.finish(FinishReason("length", length=len(req.output_ids)))
        return text

    def finish_text(self, req: Req) -> str:
        """Close the request's stream; return the text it still held back."""
        stream = self._streams.pop(req.rid, None)
        if stream is None or stream.stop is not None:
            return ""
        return stream.finish().text
