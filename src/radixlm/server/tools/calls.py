"""What a tool-call parser emits: content text, call headers and argument fragments.

A parser turns the model's text into a stream of events. Concatenated in order, the
events of any chunking of the same text are the same: content is the text outside
calls, each call has one header (index, id, name) and argument fragments that join to
its final JSON arguments. Nothing emitted is ever taken back.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TextDelta:
    """Content text (outside any tool call)."""

    text: str


@dataclass(frozen=True)
class CallHeader:
    """A tool call begins: its position in the message, its id and the function's name."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ArgsDelta:
    """More of call `index`'s arguments (JSON text); the fragments join to the final text."""

    index: int
    text: str


Event = TextDelta | CallHeader | ArgsDelta


@dataclass
class ToolCall:
    """One finished call: `arguments` is the JSON text of an object."""

    id: str
    name: str
    arguments: str = ""

    def to_openai(self) -> dict:
        """The call in OpenAI's `message.tool_calls` shape."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}  # fmt: skip


@dataclass
class ParsedOutput:
    """A whole output split into content and calls (the non-streamed result)."""

    content: str = ""
    calls: list[ToolCall] = field(default_factory=list)


def collect(events: Iterable[Event], into: ParsedOutput | None = None) -> ParsedOutput:
    """Fold events into a ParsedOutput (appending to `into` when given); returns it."""
    out = into if into is not None else ParsedOutput()
    for ev in events:
        if isinstance(ev, TextDelta):
            out.content += ev.text
        elif isinstance(ev, CallHeader):
            assert ev.index == len(out.calls), "call headers come in index order"
            out.calls.append(ToolCall(ev.id, ev.name))
        else:
            out.calls[ev.index].arguments += ev.text
    return out


def random_call_id() -> str:
    """A fresh call id in OpenAI's style (`call_` and 24 hex digits)."""
    return f"call_{uuid.uuid4().hex[:24]}"


IdFactory = Callable[[], str]
