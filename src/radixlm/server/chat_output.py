"""One chat choice's output -> OpenAI's message, or its stream of deltas.

`ChoiceOutput` runs the reasoning split (when a reasoning parser is on) and the tool-call
parser (when the request's output is read for calls) over the text as it streams. `feed`
gives a delta's fields (`content`, `reasoning_content`, `tool_calls`), `message` the
non-streamed message; both come from the same pieces, so the streamed deltas joined are
the message. Tool calls are read from the answer only, never from the reasoning.
"""

from __future__ import annotations

from typing import Any

from radixlm.server.reasoning import ReasoningParser
from radixlm.server.tools import ArgsDelta, CallHeader, Event, TextDelta, ToolParser


class ChoiceOutput:
    """See the module docstring. `parallel=False` keeps only the first call."""

    def __init__(self, reasoning: ReasoningParser | None, separate: bool,
                 tools: ToolParser | None, parallel: bool = True) -> None:  # fmt: skip
        self.reasoning = reasoning
        self.separate = separate
        self.tools = tools
        self.parallel = parallel
        self.calls: list[dict[str, Any]] = []
        self.content = ""
        self.reasoning_text = ""

    def feed(self, text: str) -> dict[str, Any]:
        """The delta fields for more output text (empty dict: nothing to send yet)."""
        return self._delta(self._pieces(text, final=False))

    def finish(self) -> dict[str, Any]:
        """The delta fields the end of the output releases."""
        return self._delta(self._pieces("", final=True))

    def message(self, text: str) -> dict[str, Any]:
        """The whole message for a non-streamed output `text`."""
        self.feed(text)
        self.finish()
        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.calls:
            msg["tool_calls"] = self.calls
            if not self.content.strip():
                msg["content"] = None
        if self.reasoning is not None and self.separate:
            msg["reasoning_content"] = self.reasoning_text or None
        return msg

    def finish_reason(self, engine_reason: str | None) -> str | None:
        """`tool_calls` for an output that ended normally with calls, else the engine's."""
        return "tool_calls" if engine_reason == "stop" and self.calls else engine_reason

    # --- internals --------------------------------------------------------------------

    def _pieces(self, text: str, final: bool) -> list[tuple[str, Any]]:
        """(kind, text-or-event) in order: reasoning / content text, or a tool event."""
        if self.reasoning is None:
            raw = [("content", text)] if text else []
        else:
            raw = self.reasoning.finish() if final else self.reasoning.feed(text)
            if final and text:
                raise ValueError("finish takes no text")
        out: list[tuple[str, Any]] = []
        for kind, piece in raw:
            if kind == "content" and self.tools is not None:
                out += [("event", ev) for ev in self.tools.feed(piece)]
            elif kind == "reasoning" and self.separate:
                out.append(("reasoning", piece))
            elif kind != "markup" or not self.separate:
                out.append(("content", piece))
        if final and self.tools is not None:
            out += [("event", ev) for ev in self.tools.finish()]
        return out

    def _delta(self, pieces: list[tuple[str, Any]]) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        for kind, piece in pieces:
            if kind == "event":
                self._event(delta, piece)
            elif kind == "reasoning":
                self.reasoning_text += piece
                delta["reasoning_content"] = delta.get("reasoning_content", "") + piece
            else:
                self.content += piece
                delta["content"] = delta.get("content", "") + piece
        return delta

    def _event(self, delta: dict[str, Any], ev: Event) -> None:
        if isinstance(ev, TextDelta):
            self.content += ev.text
            delta["content"] = delta.get("content", "") + ev.text
            return
        if ev.index > 0 and not self.parallel:
            return  # parallel_tool_calls false: the first call only
        entries = delta.setdefault("tool_calls", [])
        if isinstance(ev, CallHeader):
            self.calls.append({"id": ev.id, "type": "function",
                               "function": {"name": ev.name, "arguments": ""}})  # fmt: skip
            entries.append({"index": ev.index, "id": ev.id, "type": "function",
                            "function": {"name": ev.name, "arguments": ""}})  # fmt: skip
        elif isinstance(ev, ArgsDelta):
            self.calls[ev.index]["function"]["arguments"] += ev.text
            if entries and entries[-1]["index"] == ev.index:
                entries[-1]["function"]["arguments"] += ev.text
            else:
                entries.append({"index": ev.index, "function": {"arguments": ev.text}})


def merge_delta(into: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """`into` extended by `more` (text fields joined, tool-call fragments appended)."""
    for key in ("content", "reasoning_content"):
        if key in more:
            into[key] = into.get(key, "") + more[key]
    for entry in more.get("tool_calls", []):
        entries = into.setdefault("tool_calls", [])
        if entries and entries[-1]["index"] == entry["index"] and "id" not in entry:
            entries[-1]["function"]["arguments"] += entry["function"]["arguments"]
        else:
            entries.append(entry)
    return into


def chat_delta(out: ChoiceOutput, text: str, reason: str | None
               ) -> tuple[dict[str, Any], str | None]:  # fmt: skip
    """(delta, finish_reason) of one streamed chunk: its text read by `out`, plus what the
    end releases when `reason` says the output ended."""
    delta = out.feed(text)
    if reason is None:
        return delta, None
    return merge_delta(delta, out.finish()), out.finish_reason(reason)
