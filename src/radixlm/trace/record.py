"""One finished request as the trace stores it, and the two ways a prompt is stored.

A trace line is a JSON object:

    {"t": arrival (unix seconds), "step": engine steps run before it arrived,
     "tenant": label of its cache salt, "prompt_len": n, "cached": n,
     "output_len": n, "max_new_tokens": n, "finish": "stop" | "length" | "abort",
     "admitted": bool, "logprob_start": -1 or the first prompt position with logprobs,
     "prompt": [token ids], "output": [token ids]}          (token mode)
     "pages": ["16 hex digits", ...]                         (hash mode, instead)

The tenant label is a hash of the salt, never the salt. In hash mode each full page of
`page_size` prompt tokens is stored as a 64-bit hash of its token ids (the partial last
page is not stored), and no output ids are kept: equal pages give equal hashes, so a
prefix tree over the hashes has the shape of the tree over the tokens.

The first line of every file is a header `{"header": {...}}` describing the server that
wrote it (see `TraceHeader`).
"""

from __future__ import annotations

import array
import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from radixlm.kvcache.activity import namespace_label

TRACE_VERSION = 1
_MASK63 = (1 << 63) - 1  # page hashes become non-negative int64 values (numpy compares them)


def tenant_label(salt: str | None) -> str:
    """The label of a cache salt: "salt:" + 12 hex digits of its SHA-256, "default" for none.

    The same label the live cache view shows; the salt itself is never stored.
    """
    return namespace_label(salt)


def page_hashes(ids: list[int], page_size: int) -> list[str]:
    """The 64-bit hash (16 hex digits) of each full page of `ids`; the partial tail is dropped."""
    n = len(ids) - len(ids) % page_size
    raw = np.asarray(ids[:n], dtype=np.int64).tobytes()
    step = 8 * page_size
    blake = hashlib.blake2b
    return [blake(raw[i : i + step], digest_size=8).hexdigest() for i in range(0, len(raw), step)]


@dataclass(frozen=True)
class TraceHeader:
    """The server a trace file came from: what a replay needs to act like it.

    `max_total_tokens` is the KV pool size in tokens; `scheduler` holds the
    `SchedulerConfig` fields as a dict; `page_size` is the hash page size (hash
    mode) or 1 (token ids stored).
    """

    model: str
    max_total_tokens: int
    context_length: int
    scheduler: dict[str, Any]
    hashed: bool = False
    page_size: int = 1
    started: float = 0.0  # when the writing server started (unix seconds): one run
    version: int = TRACE_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TraceHeader:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass
class TraceRecord:
    """One finished request (see the module docstring for the JSON form).

    Exactly one of `prompt` (token ids) and `pages` (page hashes as ints) is set.
    """

    t: float
    step: int
    tenant: str | None
    prompt_len: int
    cached: int
    output_len: int
    max_new_tokens: int
    finish: str
    admitted: bool = True
    logprob_start: int = -1
    prompt: list[int] | None = None
    output: list[int] | None = None
    pages: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        # vars, not asdict: asdict deep-copies the id lists (~0.6 ms for 1,000 ids).
        d = {k: v for k, v in vars(self).items() if v is not None and k != "extra"}
        if self.pages is not None:
            d["pages"] = [f"{p:016x}" for p in self.pages]
        return d

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> TraceRecord:
        """Parse one trace line's object; raises KeyError/ValueError/TypeError on a bad one."""
        pages = d.get("pages")
        return cls(
            t=float(d["t"]),
            step=int(d.get("step", 0)),
            tenant=d.get("tenant"),
            prompt_len=int(d["prompt_len"]),
            cached=int(d.get("cached", 0)),
            output_len=int(d.get("output_len", 0)),
            max_new_tokens=int(d.get("max_new_tokens", d.get("output_len", 0))),
            finish=str(d.get("finish", "")),
            admitted=bool(d.get("admitted", True)),
            logprob_start=int(d.get("logprob_start", -1)),
            prompt=_ids(d.get("prompt")),
            output=_ids(d.get("output")),
            pages=None if pages is None else [int(p, 16) & _MASK63 for p in pages],
        )

    @property
    def hashed(self) -> bool:
        return self.prompt is None


def _ids(value: Any) -> list[int] | None:
    """A JSON list of token ids, itself (None stays None); raises TypeError or ValueError
    unless every item is an int that fits 64 bits (checked at C speed by `array`)."""
    if value is None:
        return None
    if type(value) is not list:
        raise TypeError(f"token ids must be a list, not {type(value).__name__}")
    try:
        array.array("q", value)
    except OverflowError as e:
        raise ValueError("a token id does not fit 64 bits") from e
    return value
