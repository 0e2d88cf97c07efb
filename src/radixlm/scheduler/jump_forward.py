"""Jump-forward decoding: plan the text a request's grammar forces next, verify it in one step.

`plan_draft` turns the forced text into draft tokens after each step; the next
decode step feeds them after the request's last token, and `verify_drafts`
samples at every draft position in turn, keeping a draft token only while it
equals what was sampled there. The tokens are therefore exactly those of
one-by-one decoding; a draft the model agrees with costs one forward instead
of one per token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from radixlm.scheduler.kv_manager import KVManager
from radixlm.scheduler.request import Req, StepOutput
from radixlm.tokenizer import Tokenizer

Sample = Callable[[list[Req], torch.Tensor], list[int]]  # (requests, logits [n, V]) -> tokens
Append = Callable[[Req, int, list[StepOutput]], None]  # one sampled token -> its output


def plan_draft(req: Req, tokenizer: Tokenizer | None, capacity: int) -> None:
    """Set `req.draft_ids` to the tokens of the text its grammar forces next (or none).

    The draft is a guess checked by the next decode step, so its tokenization only
    affects how much is skipped, never the result. It leaves room for one sampled
    token after it within max_new_tokens and `capacity`. No tokenizer: no drafts.
    """
    req.draft_ids = []
    if tokenizer is None or req.grammar is None or req.finished:
        return
    forced = req.grammar.jump_forward_string()
    if not forced:
        return
    room = min(req.remaining_new_tokens(), capacity - req.fill_len) - 1
    if room > 0:
        req.draft_ids = tokenizer.encode(forced, add_special_tokens=False)[:room]


def verify_drafts(
    reqs: list[Req], last: torch.Tensor, extra: list[torch.Tensor | None], kv: KVManager,
    sample: Sample, append: Append,
) -> tuple[list[StepOutput], int]:  # fmt: skip
    """Sample draft positions in rounds; a request goes on while its draft matches.

    last: [B, V] logits after each request's last fed token; extra[i]: [k_i, V] logits
    at its fed positions before that (its last token, then draft tokens). Round j
    samples every request still going from the logits at its j-th fed position
    (0: its last token, j: draft token j-1). Draft token j's slot joins the
    request's K/V only when the token sampled in round j equals it; the slots of
    the rest are freed. Returns one output per request, and how many draft tokens
    were accepted.
    """
    drafts = [r.draft_ids for r in reqs]
    spare = [kv.set_aside_drafts(r, len(d)) for r, d in zip(reqs, drafts, strict=True)]
    used = [0] * len(reqs)
    going, j, accepted = list(range(len(reqs))), 0, 0
    step_outputs: list[StepOutput] = []
    while going:
        rows = [extra[i][j] if j < len(drafts[i]) else last[i] for i in going]  # type: ignore[index]
        tokens = sample([reqs[i] for i in going], torch.stack(rows))
        nxt = []
        for i, token in zip(going, tokens, strict=True):
            req = reqs[i]
            append(req, token, step_outputs)
            if not req.finished and j < len(drafts[i]) and token == drafts[i][j]:
                kv.keep_draft_slot(req, spare[i][j : j + 1])
                used[i] += 1
                nxt.append(i)
        accepted += len(nxt)
        going, j = nxt, j + 1
    for i, slots in enumerate(spare):
        kv.pool.free(slots[used[i] :])
    merged: dict[int, StepOutput] = {}  # one output per request and step
    for o in step_outputs:
        prev = merged.get(id(o.req))
        if prev is not None:
            o = StepOutput(o.req, prev.new_ids + o.new_ids, prev.text + o.text, o.finished)
        merged[id(o.req)] = o
    return list(merged.values()), accepted
