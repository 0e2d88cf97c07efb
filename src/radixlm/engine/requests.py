"""The one request builder: prompts, sampling params and request options -> engine requests.

Both doors use it: the HTTP server (its thin adapter maps the errors to API errors
under the API's field names) and the offline `Engine`. A request is a `GenerateMsg`
(picklable, so it crosses the process boundary as is); the loop turns it into the
scheduler's `Req` with `to_req`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from radixlm.engine.messages import GenerateMsg
from radixlm.grammar import validate_grammar
from radixlm.sampling.params import SamplingParams, SamplingParamsError
from radixlm.scheduler.request import Req


@dataclass(frozen=True)
class RequestOptions:
    """What a request asks for besides its prompt and sampling params (SGLang's fields).

    `cache_salt` becomes the request's cache namespace: prefixes are shared only
    between requests with the same salt.
    """

    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    return_text_in_logprobs: bool = False
    cache_salt: str | None = None

    def __post_init__(self) -> None:
        if self.top_logprobs_num < 0:
            raise SamplingParamsError("top_logprobs_num", "must be >= 0")


def build_requests(
    prompts: Sequence[list[int]],
    params: Sequence[SamplingParams],
    rids: Sequence[str | None],
    options: RequestOptions,
    vocab_size: int,
    max_n: int | None = None,
) -> list[GenerateMsg]:
    """One request per prompt and sample; prompt i comes with params[i] and rids[i].

    Prompt i expands to params[i].n consecutive requests with n = 1 each, named
    `rid` (n = 1) or `rid-0`, `rid-1`, ... (a fresh id when rid is None); with a
    seed, sample j draws with seed + j. Raises `SamplingParamsError` (n above
    `max_n`, an unsupported field, a token id outside the vocabulary) or
    `GrammarError` (a grammar that does not compile); both name the field.
    """
    if not len(prompts) == len(params) == len(rids):
        raise SamplingParamsError("rid", "one per prompt")
    for p in params:
        check_params(p, vocab_size, max_n)
    msgs = []
    for ids, p, rid in zip(prompts, params, rids, strict=True):
        base = rid or uuid.uuid4().hex
        for i in range(p.n):
            one = p if p.n == 1 else dataclasses.replace(
                p, n=1, seed=None if p.seed is None else p.seed + i
            )  # fmt: skip
            msgs.append(
                GenerateMsg(
                    rid=base if p.n == 1 else f"{base}-{i}",
                    input_ids=list(ids),
                    params=one,
                    return_logprob=options.return_logprob,
                    logprob_start_len=options.logprob_start_len,
                    top_logprobs_num=options.top_logprobs_num,
                    return_text_in_logprobs=options.return_text_in_logprobs,
                    extra_key=options.cache_salt,
                    parent_rid=None if p.n == 1 else base,
                )
            )
    return msgs


def check_params(p: SamplingParams, vocab_size: int, max_n: int | None = None) -> None:
    """Raise unless the engine can serve `p` (see `build_requests`)."""
    if max_n is not None and p.n > max_n:
        raise SamplingParamsError(
            "n", f"at most {max_n} samples per request (got {p.n}; see --max-n)"
        )
    if p.stop_regexes:
        raise SamplingParamsError("stop_regex", "not supported")
    p.check_vocab(vocab_size)
    if p.grammar is not None:
        validate_grammar(*p.grammar)  # GrammarError names the field


def to_req(msg: GenerateMsg) -> Req:
    """The scheduler's request for `msg` (a fresh object: the scheduler owns it)."""
    return Req(
        rid=msg.rid,
        input_ids=list(msg.input_ids),
        params=msg.params,
        return_logprob=msg.return_logprob,
        logprob_start_len=msg.logprob_start_len,
        top_logprobs_num=msg.top_logprobs_num,
        extra_key=msg.extra_key,
        parent_rid=msg.parent_rid,
    )
