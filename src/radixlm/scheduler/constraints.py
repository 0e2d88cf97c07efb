"""The scheduler's constrained-decoding part: compile, mask, accept.

Life of a constrained request: `start` (queued) begins the compile in the
background; `poll` (each step, while it waits) gives it a matcher once the
compile is done, or fails it; `mask` restricts its logits to what the grammar
allows; `accept` advances the matcher over each sampled token and ends the
request when the grammar is complete. The text a grammar forces next is
jumped over by `scheduler.jump_forward`, with `draft_tokenizer`.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, wait

import torch

from radixlm.grammar import GrammarCache, GrammarError
from radixlm.scheduler.request import FinishReason, Req
from radixlm.tokenizer import Tokenizer


class Constraints:
    """Grammar work for the scheduler; `cache` None means constrained decoding is off."""

    def __init__(
        self, cache: GrammarCache | None, tokenizer: Tokenizer | None, jump_forward: bool = True
    ) -> None:
        self.cache = cache
        # What jump-forward encodes forced text with; None turns drafts off.
        self.draft_tokenizer = tokenizer if jump_forward and cache is not None else None

    def start(self, req: Req) -> None:
        """Begin compiling `req`'s grammar; ValueError when constrained decoding is off."""
        grammar = req.params.grammar
        if grammar is None:
            return
        if self.cache is None:
            raise ValueError(f"{grammar[0]}: constrained decoding is disabled on this engine")
        req.grammar_future = self.cache.get(*grammar)

    def poll(self, req: Req) -> bool:
        """True once `req` may be scheduled; a failed compile finishes it (abort, the reason)."""
        fut = req.grammar_future
        if fut is None:
            return True
        if not fut.done():
            return False
        req.grammar_future = None
        try:
            req.grammar = self.cache.backend.matcher(fut.result())  # type: ignore[union-attr]
        except GrammarError as e:
            req.finish(FinishReason("abort", message=str(e)))
        return True

    @staticmethod
    def wait_for_compiles(reqs: list[Req], timeout: float) -> None:
        """Block until one of `reqs`' compiles ends, or `timeout` seconds (an idle scheduler)."""
        futures = [r.grammar_future for r in reqs if r.grammar_future is not None]
        if futures:
            wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)

    def mask(self, logits: torch.Tensor, reqs: list[Req]) -> None:
        """Set every token a row's grammar forbids to -inf in logits [B, V], in place."""
        rows = [i for i, r in enumerate(reqs) if r.grammar is not None]
        if not rows:
            return
        backend = self.cache.backend  # type: ignore[union-attr]
        bitmask = backend.allocate_bitmask(len(reqs))
        for i in rows:
            reqs[i].grammar.fill_bitmask(bitmask, i)  # type: ignore[union-attr]
        backend.apply_bitmask(logits, bitmask, rows)

    @staticmethod
    def accept(req: Req, token: int) -> None:
        """Advance `req`'s grammar over `token`; finish it when the grammar ends (or refuses)."""
        if req.grammar is None or req.finished:
            return
        if not req.grammar.accept_token(token):
            # Only reachable when every allowed token was masked out by something else
            # (e.g. min_new_tokens banning the eos the grammar requires).
            req.finish(FinishReason("abort", message=f"the grammar cannot accept token {token}"))
        elif req.grammar.is_terminated():
            req.finish(FinishReason("stop", matched=token))
