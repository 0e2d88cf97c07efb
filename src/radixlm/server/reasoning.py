"""Reasoning output: split a model's `<think>...</think>` from its answer.

Two styles, as the models write them:

* `deepseek-r1`: the chat template already opened the thinking, so the output starts
  inside it; everything up to `</think>` is reasoning (all of it when the tag never
  comes). A `<think>` at the very start is dropped as markup.
* `qwen3`: reasoning only when the output begins with `<think>` (leading whitespace
  allowed); otherwise everything is content.

`ReasoningParser.feed` returns `(kind, text)` pieces, kind `reasoning`, `content` or
`markup` (the tags and the whitespace that joins them to the text). Joined in order,
all pieces are the raw text, so turning the split off (`separate_reasoning: false`)
is the same pieces sent as content. Every chunking gives the same pieces joined per
kind. Tool calls are read from the `content` pieces only: a call written while the
model reasons is part of its reasoning and is never executed.
"""

from __future__ import annotations

import re

from radixlm.config import REASONING_PARSERS
from radixlm.server.tools.base import partial_suffix

OPEN, CLOSE = "<think>", "</think>"
_LEAD_WS = re.compile(r"\s*")

Piece = tuple[str, str]


class ReasoningParser:
    """One output's reasoning split (see the module docstring). Not thread-safe."""

    def __init__(self, style: str) -> None:
        if style not in REASONING_PARSERS:
            raise ValueError(f"unknown reasoning parser {style!r}; choose from "
                             f"{', '.join(REASONING_PARSERS)}")  # fmt: skip
        self.style = style
        # lead: before we know whether (and where) reasoning starts; think: inside it;
        # after: the answer (and everything once reasoning is over).
        self._state = "lead"
        self._buf = ""
        self._out: list[Piece] = []

    def feed(self, text: str) -> list[Piece]:
        """More output; returns the pieces that became certain."""
        self._buf += text
        self._run(final=False)
        return self._take()

    def finish(self) -> list[Piece]:
        """The output ended; returns what was held back."""
        self._run(final=True)
        return self._take()

    def split(self, text: str) -> tuple[str, str]:
        """(reasoning, content) of a whole output."""
        pieces = [*self.feed(text), *self.finish()]
        return (
            "".join(t for k, t in pieces if k == "reasoning"),
            "".join(t for k, t in pieces if k == "content"),
        )

    def _run(self, final: bool) -> None:
        if self._state == "lead":
            self._lead(final)
        if self._state == "think":
            self._think(final)
        if self._state == "after" and self._buf:
            self._emit("content", self._buf)
            self._buf = ""

    def _lead(self, final: bool) -> None:
        ws = _LEAD_WS.match(self._buf).end()  # type: ignore[union-attr]
        rest = self._buf[ws:]
        if rest.startswith(OPEN):
            self._emit("markup", self._buf[: ws + len(OPEN)])
            self._buf = rest[len(OPEN):]
            self._state = "think"
        elif OPEN.startswith(rest) and not final:
            return  # wait: this may be the opening tag
        else:
            self._state = "think" if self.style == "deepseek-r1" else "after"

    def _think(self, final: bool) -> None:
        k = self._buf.find(CLOSE)
        if k >= 0:
            self._emit("reasoning", self._buf[:k])
            self._emit("markup", CLOSE)
            self._buf = self._buf[k + len(CLOSE):]
            self._state = "after"
            return
        keep = 0 if final else partial_suffix(self._buf, CLOSE)
        self._emit("reasoning", self._buf[: len(self._buf) - keep])
        self._buf = self._buf[len(self._buf) - keep:]

    def _emit(self, kind: str, text: str) -> None:
        if text:
            self._out.append((kind, text))

    def _take(self) -> list[Piece]:
        out, self._out = self._out, []
        return out
