"""The interface the interpreter drives, and the request accounting every backend keeps."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from radixlm.lang.chat_template import ChatTemplate
from radixlm.lang.select import SelectResult


@dataclass(frozen=True)
class Context:
    """What a request is made of: the program's text so far and, for chat APIs, its turns.

    `messages` are the finished turns; `open_role` is the role of the turn in progress
    (None outside a role) and `open_content` what it holds so far.
    """

    text: str
    messages: tuple[dict[str, str], ...] = ()
    open_role: str | None = None
    open_content: str = ""


@dataclass(frozen=True)
class RequestRecord:
    """One request a backend sent: its kind (gen, commit, select), prompt and token counts."""

    kind: str
    prompt: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


@dataclass
class Usage:
    """Token counts over every request a backend sent; thread-safe.

    `records` keeps each request when the backend was made with `record_requests=True`.
    """

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    records: list[RequestRecord] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests += 1
            self.prompt_tokens += record.prompt_tokens
            self.cached_tokens += record.cached_tokens
            self.completion_tokens += record.completion_tokens
            if self.records is not None:
                self.records.append(record)

    @property
    def cache_hit_rate(self) -> float:
        """Cached prompt tokens over prompt tokens (0 before any request)."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def reset(self) -> None:
        with self._lock:
            self.requests = self.prompt_tokens = self.cached_tokens = 0
            self.completion_tokens = 0
            if self.records is not None:
                self.records.clear()


@dataclass(frozen=True)
class GenOutput:
    """A finished generation: its text and the backend's meta info."""

    text: str
    meta: dict[str, Any]


class Backend(ABC):
    """A model a program can run on. Implementations must be safe to call from many threads."""

    def __init__(self, record_requests: bool = False) -> None:
        self.usage = Usage(records=[] if record_requests else None)

    @property
    @abstractmethod
    def chat_template(self) -> ChatTemplate:
        """How role turns are written for this backend's model."""

    @abstractmethod
    def generate(self, ctx: Context, sampling_params: dict[str, Any]) -> GenOutput:
        """Continue `ctx` with SGLang-shaped `sampling_params`; raises RequestError."""

    def generate_stream(self, ctx: Context, sampling_params: dict[str, Any]) -> Iterator[str]:
        """Yield the text of a generation in pieces, then return its GenOutput.

        The default produces the whole text as one piece.
        """
        out = self.generate(ctx, sampling_params)
        yield out.text
        return out

    def commit_prefix(self, text: str) -> None:  # noqa: B027 (optional for backends)
        """Have the backend cache `text` as a prefix (a prefill with no output); may do nothing."""

    @abstractmethod
    def select(self, ctx: Context, choices: list[str], method: str) -> SelectResult:
        """Pick one of `choices` to follow `ctx`; raises RequestError."""

    def close(self) -> None:  # noqa: B027 (optional for backends)
        """Release connections; the backend is unusable afterwards."""


def as_backend(obj: Any) -> Backend:
    """`obj` when it is a Backend; a `radixlm.Engine` is wrapped in an EngineBackend."""
    if isinstance(obj, Backend):
        return obj
    if type(obj).__module__.startswith("radixlm.engine"):
        from radixlm.lang.backends.engine import EngineBackend

        return EngineBackend(obj)
    raise TypeError(f"not a backend: {obj!r} (use EngineBackend, RuntimeEndpoint or OpenAI)")
