"""Turn logits and sampler results into a request's logprob lists (SGLang's shapes)."""

from __future__ import annotations

import torch

from radixlm.executor.model_runner import ForwardItem
from radixlm.sampling.logprobs import token_logprobs
from radixlm.sampling.sampler import SampleOutput
from radixlm.scheduler.request import Req


def record_input_logprobs(
    req: Req, item: ForwardItem, last: torch.Tensor, extra: torch.Tensor | None
) -> None:
    """Append the prompt-token logprobs this prefill (chunk) computed.

    The forward returned logits for positions first..end-1 of the sequence
    (`extra` then `last`); position p scores prompt token p + 1. Prompt token
    0 has no predecessor: its entry carries a None logprob.
    """
    end = item.prefix_len + len(item.new_ids)
    rows = last.unsqueeze(0) if extra is None else torch.cat([extra, last.unsqueeze(0)])
    first = end - rows.shape[0]
    prompt_len = len(req.input_ids)
    if first == 0 and req.logprob_start_len == 0:
        req.input_logprobs.append((None, req.input_ids[0]))  # type: ignore[arg-type]
        req.input_top_logprobs.append(None)  # type: ignore[arg-type]
    usable = min(end, prompt_len - 1) - first  # rows that score a prompt token
    if usable > 0:
        targets = torch.tensor(req.input_ids[first + 1 : first + 1 + usable], device=rows.device)
        lp, top_ids, top_lp = token_logprobs(rows[:usable], targets, req.top_logprobs_num)
        tops = _top_lists(top_ids, top_lp)
        for value, token, top in zip(lp.tolist(), targets.tolist(), tops, strict=True):
            req.input_logprobs.append((value, token))
            req.input_top_logprobs.append(top)
    if end >= prompt_len:
        req.input_logprobs_done = True


def record_output_logprobs(reqs: list[Req], ids: list[int], res: SampleOutput) -> None:
    """Append each request's chosen-token logprob and its top alternatives."""
    assert res.logprobs is not None
    values = res.logprobs.tolist()
    tops = (
        _top_lists(res.top_logprobs_ids, res.top_logprobs)
        if res.top_logprobs_ids is not None
        else [[] for _ in reqs]
    )
    for req, token, value, top in zip(reqs, ids, values, tops, strict=True):
        if req.return_logprob:
            req.output_logprobs.append((value, token))
            req.output_top_logprobs.append(top[: req.top_logprobs_num])


def _top_lists(ids: torch.Tensor, values: torch.Tensor) -> list[list[tuple[float, int]]]:
    """Rows of [k] ids and logprobs -> per row a list of (logprob, token_id)."""
    return [
        list(zip(v, i, strict=True)) for v, i in zip(values.tolist(), ids.tolist(), strict=True)
    ]
