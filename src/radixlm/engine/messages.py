"""Typed messages between the HTTP process and the engine process (pickled over ZeroMQ).

HTTP -> engine (the "requests" socket): `GenerateMsg`, `AbortMsg`, `ControlMsg`.
Engine -> HTTP (the "outputs" socket): a list of `ChunkMsg` / `ErrorMsg` / `ReplyMsg`
per send, so one scheduler step costs one message.

Sampling params travel parsed and validated (`SamplingParams` pickles): they are
checked once, where the request is built (`engine.requests`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from radixlm.sampling.params import SamplingParams


@dataclass
class GenerateMsg:
    """One sequence to generate (n was expanded by the sender: one message per sample)."""

    rid: str
    input_ids: list[int]
    params: SamplingParams
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    return_text_in_logprobs: bool = False
    extra_key: str | None = None  # cache namespace: prefixes are shared only within one key
    parent_rid: str | None = None  # with n > 1: the caller's rid, which aborts every sample
    tenant: str | None = None  # who sent it (None: an admin); only its tenant may abort it


@dataclass
class AbortMsg:
    """Abort `rid`, or every request when `rid` is None."""

    rid: str | None = None


@dataclass
class ControlMsg:
    """A call answered by one `ReplyMsg` with the same `cid`.

    kinds: "get_stats", "flush_cache", "check_integrity", "cache_snapshot" (the tree for the
    live cache view), "shutdown" (no reply).
    """

    cid: int
    kind: str


@dataclass
class ChunkMsg:
    """What one scheduler step produced for one request.

    `text_delta` is new text (detokenized in the engine, stop strings trimmed);
    `new_ids` the new token ids; `meta_info` SGLang's cumulative meta_info;
    `output_logprobs` / `output_top_logprobs` the entries of `new_ids` only (when logprobs
    were asked);
    `final_logprobs` the full logprob fields, on the finishing chunk only.
    """

    rid: str
    text_delta: str
    new_ids: list[int]
    finished: bool
    meta_info: dict[str, Any]
    output_logprobs: list[list[Any]] | None = None
    output_top_logprobs: list[list[list[Any]]] | None = None
    final_logprobs: dict[str, Any] | None = None


@dataclass
class ErrorMsg:
    """Request `rid` ends without a result; `message` says why.

    `status` 400: the engine refused it (e.g. it can never fit); 500: the engine
    failed while running it (its batch's step raised, or the engine is going down).
    """

    rid: str
    message: str
    status: int = 400


@dataclass
class ReplyMsg:
    cid: int
    result: Any = None
    error: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    """What the HTTP process knows of the loaded model and the KV pool."""

    model_path: str
    architecture: str
    dtype: str
    device: str
    weights_mib: float
    context_length: int
    vocab_size: int
    max_total_tokens: int  # KV pool slots
    max_request_tokens: int  # the most tokens (prompt + output) one request may hold
    pid: int  # the engine process


@dataclass
class ReadyMsg:
    """Sent once over the start-up pipe: what was loaded, or why loading failed."""

    error: str | None = None
    info: ModelInfo | None = None
