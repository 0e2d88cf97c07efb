"""The JSON tool-call formats: Hermes / Qwen `<tool_call>`, Llama 3 JSON, Mistral `[TOOL_CALLS]`.

Each is a `JsonCallParser` with its own markers and what may come between calls.
"""

from __future__ import annotations

import re

from radixlm.server.tools.base import JsonCallParser, partial_suffix

_LEAD_WS = re.compile(r"[ \t\n\r]*")


def _lstrip(text: str) -> tuple[str, str]:
    """(leading whitespace, the rest)."""
    n = _LEAD_WS.match(text).end()  # type: ignore[union-attr]
    return text[:n], text[n:]


class HermesParser(JsonCallParser):
    """`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, any number of them,
    with content around (Hermes 2/3, Qwen 2.5/3, and the format radixlm writes for chat
    templates without tool support).

    Whitespace between a call's end tag and the next call is not content. Text after a
    committed call's object up to its end tag is dropped (the object already ended)."""

    name = "hermes"
    start = "<tool_call>"
    end = "</tool_call>"

    def _in_between(self, final: bool) -> None:
        _, rest = _lstrip(self._buf)
        if rest.startswith(self.end):
            self._buf = rest[len(self.end):]
            self._state = "after_end"
        elif rest.startswith(self.start):  # a new call without closing the last one
            self._buf = rest[len(self.start):]
            self._raw = self.start
            self._begin_call()
        elif self.end.startswith(rest) or self.start.startswith(rest):
            if final:
                self._buf = ""
        else:  # stray text: dropped up to the first end tag or new call
            ends = [(k, m) for m in (self.end, self.start) if (k := rest.find(m)) >= 0]
            if ends:
                k, _ = min(ends)
                self._buf = rest[k:]
            elif final:
                self._buf = ""
            else:  # keep only what could still begin either tag
                keep = max(partial_suffix(rest, self.end), partial_suffix(rest, self.start))
                self._buf = rest[len(rest) - keep:]

    def _in_after_end(self, final: bool) -> None:
        _, rest = _lstrip(self._buf)
        if not rest:
            if final:
                self._buf = ""  # trailing whitespace after the last call
            return
        if rest.startswith(self.start) or (self.start.startswith(rest) and not final):
            if not rest.startswith(self.start):
                return  # wait: this may be the next call's tag
            self._buf = rest  # drop the whitespace between calls
        self._state = "text"


class Llama3JsonParser(JsonCallParser):
    """Llama 3.x JSON calls: the output begins with `{"name": ..., "parameters": {...}}`
    (after an optional `<|python_tag|>`), several separated by `;`. Output that does not
    begin so is content."""

    name = "llama3"
    python_tag = "<|python_tag|>"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._state = "lead"

    def _in_lead(self, final: bool) -> None:
        ws, rest = _lstrip(self._buf)
        if rest.startswith(self.python_tag):
            self._raw += ws + self.python_tag
            self._buf = rest[len(self.python_tag):]
            return
        if rest.startswith("{"):
            self._raw += ws
            self._buf = rest
            self._begin_call()
        elif final or (rest and not self.python_tag.startswith(rest)):
            self._buf = self._raw + self._buf
            self._raw = ""
            self._state = "plain"

    def _in_between(self, final: bool) -> None:
        ws, rest = _lstrip(self._buf)
        if rest.startswith(";"):
            self._raw = ws + ";"
            self._buf = rest[1:]
            self._begin_call()
        elif rest:
            self._state = "plain"
        elif final:
            self._buf = ""


class MistralParser(JsonCallParser):
    """Mistral's `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]` after any content.

    `[TOOL_CALLS]` is a special token in Mistral's vocabularies, so outputs read by this
    parser keep special tokens in their text."""

    name = "mistral"
    start = "[TOOL_CALLS]"
    skip_special_tokens = False

    def _in_open(self, final: bool) -> None:
        ws, rest = _lstrip(self._buf)
        if rest.startswith("["):
            self._raw += ws + "["
            self._buf = rest[1:]
            self._begin_call()
        elif rest or final:
            self._buf = self._raw + self._buf
            self._raw = ""
            self._state = "plain"

    def _in_between(self, final: bool) -> None:
        ws, rest = _lstrip(self._buf)
        if rest.startswith(","):
            self._raw = ws + ","
            self._buf = rest[1:]
            self._begin_call()
        elif rest.startswith("]"):
            self._buf = rest[1:]
            self._state = "text"
        elif rest:
            self._state = "plain"
        elif final:
            self._buf = ""
