"""A request as the scheduler sees it: tokens, sampling params, KV slots, lock, output."""

from __future__ import annotations

import enum
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from radixlm.grammar import GrammarMatcher
from radixlm.kvcache.prefix_cache import TreeNode
from radixlm.sampling.params import SamplingParams


class ReqState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True)
class FinishReason:
    """Why a request ended, in SGLang's `meta_info.finish_reason` shape."""

    type: str  # "stop" | "length" | "abort"
    matched: int | str | None = None  # the stop token id or stop string
    length: int | None = None
    message: str | None = None
    status_code: int | None = None  # an abort that is the engine's fault: 500

    @classmethod
    def internal_error(cls, error: BaseException) -> FinishReason:
        """The request ended because the engine failed (its batch's forward raised)."""
        return cls("abort", message=f"internal error: {type(error).__name__}: {error}",
                   status_code=500)  # fmt: skip

    @property
    def is_error(self) -> bool:
        """True when the caller should get an error rather than a result."""
        return self.status_code is not None and self.status_code >= 500

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type}
        if self.type == "stop":
            d["matched"] = self.matched
        elif self.type == "length":
            d["length"] = self.length
        elif self.message is not None:
            d["message"] = self.message
            if self.status_code is not None:
                d["status_code"] = self.status_code
        return d


@dataclass(eq=False)  # a request is itself: `in` and `remove` on lists compare identity
class Req:
    """One sequence to generate.

    KV bookkeeping (the map of a running request's slots):

        kv_slots[0 : cache_protected_len]      owned by the prefix cache, locked via last_node
        kv_slots[cache_protected_len : kv_len] owned by this request (computed, not yet cached)

    `kv_len == len(kv_slots)` tokens of `fill_ids` have K/V. The newest sampled
    token never has K/V until the next decode step computes it.

    `input_ids` never changes after construction (`prefix_key` caches its tuple).
    """

    rid: str
    input_ids: list[int]
    params: SamplingParams
    extra_key: str | None = None  # cache namespace (per-tenant salt)
    parent_rid: str | None = None  # one of n samples: the rid of the call (aborts them all)
    return_logprob: bool = False
    logprob_start_len: int = -1  # prompt logprobs from this position (-1: none)
    top_logprobs_num: int = 0
    output_ids: list[int] = field(default_factory=list)
    state: ReqState = ReqState.WAITING
    finish_reason: FinishReason | None = None

    # KV state (see the class docstring). The slots are kept as pieces ([n_i] int64
    # each, in order), joined by one cat when `kv_slots` is read: a decode step appends
    # a piece without a copy, and reads that need no slots between steps (the trace
    # replay's) never pay for one.
    _kv_pieces: list[torch.Tensor] | None = field(default=None, init=False, repr=False)
    _kv_len: int = field(default=0, init=False, repr=False)
    cache_protected_len: int = 0
    last_node: TreeNode | None = None

    # Constrained decoding: the compile in flight, then the matcher; draft_ids are the
    # tokens of the text the grammar forces next, checked by the next decode step.
    grammar_future: Future[Any] | None = None
    grammar: GrammarMatcher | None = None
    draft_ids: list[int] = field(default_factory=list)

    # Accounting for meta_info.
    input_logprobs_done: bool = False
    cached_tokens: int = 0  # prompt tokens served from the cache (first admission)
    admitted_once: bool = False
    retractions: int = 0
    created_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None

    # Logprobs gathered so far: (logprob, token_id) pairs and top-k alternatives.
    input_logprobs: list[tuple[float, int]] = field(default_factory=list)
    input_top_logprobs: list[list[tuple[float, int]]] = field(default_factory=list)
    output_logprobs: list[tuple[float, int]] = field(default_factory=list)
    output_top_logprobs: list[list[tuple[float, int]]] = field(default_factory=list)
    _input_key: tuple[int, ...] | None = field(default=None, init=False, repr=False)

    @property
    def fill_ids(self) -> list[int]:
        """Every token of the sequence so far: prompt, then output."""
        return self.input_ids + self.output_ids

    def prefix_key(self, n: int, start: int = 0) -> tuple[int, ...]:
        """fill_ids[start:n] as a tuple, the prefix cache's key type.

        The prompt's tuple is built on the first call and kept, so a key inside the
        prompt costs one tuple slice (no list is built).
        """
        key = self._input_key
        if key is None:
            key = self._input_key = tuple(self.input_ids)
        p = len(key)
        if n <= p:
            return key if start == 0 and n == p else key[start:n]
        out = tuple(self.output_ids[max(start - p, 0) : n - p])
        return key[start:] + out if start < p else out

    @property
    def fill_len(self) -> int:
        """len(fill_ids), without building the list."""
        return len(self.input_ids) + len(self.output_ids)

    @property
    def last_token(self) -> int:
        """fill_ids[-1], without building the list (the next decode step's input)."""
        return self.output_ids[-1] if self.output_ids else self.input_ids[-1]

    @property
    def kv_slots(self) -> torch.Tensor | None:
        """The slots of the first kv_len tokens ([kv_len] int64), or None with no KV state.

        Safe to use until the next `set_slots`/`append_slots`.
        """
        pieces = self._kv_pieces
        if pieces is None:
            return None
        if len(pieces) > 1:
            pieces[:] = [torch.cat(pieces)]
        return pieces[0]

    @property
    def has_kv(self) -> bool:
        """Whether the request holds KV state (slots, a lock); cheaper than reading them."""
        return self._kv_pieces is not None

    def split_slots(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(pieces of kv_slots[:cache_protected_len], kv_slots[cache_protected_len:] joined).

        Only the request's own part is copied: the cached prefix, often most of the
        sequence, stays in the pieces it came in. Requires KV state.
        """
        pieces = self._kv_pieces
        assert pieces is not None
        head: list[torch.Tensor] = []
        left = self.cache_protected_len
        i = 0
        while left and i < len(pieces):
            n = pieces[i].shape[0]
            if n > left:
                break
            head.append(pieces[i])
            left -= n
            i += 1
        rest = pieces[i:]
        if left:  # the boundary falls inside piece i
            head.append(rest[0][:left])
            rest = [rest[0][left:], *rest[1:]]
        if len(rest) == 1:
            return head, rest[0]
        return head, torch.cat(rest) if rest else pieces[0][:0]

    def set_slots(self, pieces: list[torch.Tensor] | None) -> None:
        """Replace the KV slots by the concatenation of `pieces` (None: no KV state)."""
        self._kv_pieces = pieces
        self._kv_len = 0 if pieces is None else sum([p.shape[0] for p in pieces])

    def append_slots(self, slots: torch.Tensor) -> None:
        """Append the slots ([n] int64) of the next n tokens' K/V (no copy is made now)."""
        assert self._kv_pieces is not None, "a request without KV state gets set_slots first"
        self._kv_pieces.append(slots)
        self._kv_len += slots.shape[0]

    @property
    def kv_len(self) -> int:
        return self._kv_len

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def max_new_tokens(self) -> int:
        return self.params.max_new_tokens

    def logit_from(self) -> int | None:
        """First position whose logits the next prefill must return (prompt logprobs), or None.

        The entry for prompt token i comes from the logits at position i - 1.
        """
        start = self.logprob_start_len
        if not self.return_logprob or start < 0 or self.input_logprobs_done:
            return None
        if start >= len(self.input_ids):
            return None
        return max(start - 1, 0)

    def max_prefix_len(self) -> int:
        """The longest cached prefix this request may reuse.

        At least one token is always computed (its logits give the next
        token), and positions whose prompt logprobs are wanted must be computed.
        """
        n = self.fill_len - 1
        frm = self.logit_from()
        return n if frm is None else min(n, frm)

    def remaining_new_tokens(self) -> int:
        return max(self.params.max_new_tokens - len(self.output_ids), 0)

    def finish(self, reason: FinishReason) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason
            self.finished_at = time.perf_counter()


@dataclass
class StepOutput:
    """What one step produced for one request: new tokens, new text, and whether it ended."""

    req: Req
    new_ids: list[int]
    text: str
    finished: bool
