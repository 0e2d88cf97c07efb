"""The parser interface, and the machinery the JSON-call formats share.

A `ToolParser` is fed an output's text in chunks (`feed`) and told when it ends
(`finish`); both return events (see `calls.py`). `parse` is the non-streamed form: the
whole text fed at once, so a stream and a whole reading agree by construction, and the
parsers are written so that every chunking gives the same events concatenated.
"""

from __future__ import annotations

from collections.abc import Collection

from radixlm.server.tools.calls import (
    ArgsDelta,
    CallHeader,
    Event,
    IdFactory,
    ParsedOutput,
    TextDelta,
    collect,
    random_call_id,
)
from radixlm.server.tools.json_call import CallStream


def partial_suffix(text: str, marker: str) -> int:
    """The length of the longest tail of `text` that is a proper prefix of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class ToolParser:
    """Base class: content handling, call numbering and ids; subclasses scan a format.

    `names` are the listed tools (a call naming another is not a call); `make_id` gives
    each call its id. Not thread-safe; one parser per output (per choice).
    """

    name = "base"
    skip_special_tokens = True  # False: the format's markers are special tokens

    def __init__(self, names: Collection[str] | None = None,
                 make_id: IdFactory = random_call_id) -> None:  # fmt: skip
        self.names = frozenset(names) if names is not None else None
        self.make_id = make_id
        self.calls = 0
        self._out: list[Event] = []

    def feed(self, text: str) -> list[Event]:
        """Read more output; returns the events it made certain."""
        self._scan(text, final=False)
        return self._take()

    def finish(self) -> list[Event]:
        """The output ended: returns the last events (held-back text, closed arguments)."""
        self._scan("", final=True)
        return self._take()

    def parse(self, text: str) -> ParsedOutput:
        """The whole output at once: content and calls."""
        return collect([*self.feed(text), *self.finish()])

    # --- for subclasses ---------------------------------------------------------------

    def _scan(self, text: str, final: bool) -> None:
        raise NotImplementedError

    def _content(self, text: str) -> None:
        if text:
            self._out.append(TextDelta(text))

    def _header(self, name: str) -> int:
        index = self.calls
        self.calls += 1
        self._out.append(CallHeader(index, self.make_id(), name))
        return index

    def _args(self, index: int, text: str) -> None:
        if text:
            self._out.append(ArgsDelta(index, text))

    def _take(self) -> list[Event]:
        out, self._out = self._out, []
        return out


class JsonCallParser(ToolParser):
    """Formats whose calls are JSON objects between markers.

    The scan is a small state machine over `self._buf` (text not yet decided):
    `text` (content, holding back a possible partial start marker), `open` (after the
    start marker, before the first object: `_open` says what is expected), `call`
    (inside an object, read by a `CallStream`), `between` (after an object: a separator,
    the end marker, or text), and `plain` (the rest of the output is content).
    """

    start = ""  # the start marker ('' where calls begin the output)

    def __init__(self, names: Collection[str] | None = None,
                 make_id: IdFactory = random_call_id) -> None:  # fmt: skip
        super().__init__(names, make_id)
        self._state = "text"
        self._buf = ""
        self._call: CallStream | None = None
        self._index = -1
        self._raw = ""  # the text of the current region, for content if it fails

    def _scan(self, text: str, final: bool) -> None:
        self._buf += text
        self._run(final)
        if final and self._state == "call" and self._call is not None:
            self._end_call(self._call.finish())
            self._run(final)
        if final:
            self._buf = ""  # what no state claimed at the end (whitespace, a partial tag)

    def _run(self, final: bool) -> None:
        """Step the state machine until it stops changing."""
        while True:
            before = (self._state, len(self._buf))
            getattr(self, f"_in_{self._state}")(final)
            if (self._state, len(self._buf)) == before:
                return

    def _in_plain(self, final: bool) -> None:
        self._content(self._buf)
        self._buf = ""

    def _in_text(self, final: bool) -> None:
        k = self._buf.find(self.start)
        if k < 0:
            keep = 0 if final else partial_suffix(self._buf, self.start)
            self._content(self._buf[: len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep:]
            return
        self._content(self._buf[:k])
        self._raw = self.start
        self._buf = self._buf[k + len(self.start):]
        self._state = "open"

    def _in_open(self, final: bool) -> None:
        self._begin_call()

    def _begin_call(self) -> None:
        self._call = CallStream(self.names)
        self._index = -1
        self._state = "call"

    def _in_call(self, final: bool) -> None:
        call = self._call
        assert call is not None
        if not self._buf:
            return
        self._end_call(call.feed(self._buf))

    def _end_call(self, new: str) -> None:
        """Emit what the call made certain; once it is done, hand the rest back."""
        call = self._call
        assert call is not None
        if call.committed and self._index < 0:
            self._index = self._header(call.name or "")
        if self._index >= 0:
            self._args(self._index, new)
        if not call.done:
            self._buf = ""
            return
        if not call.committed:  # not a call: its whole region becomes content
            self._buf = ""
            self._content(self._raw + call.text)
            self._state = "plain"
            return
        self._buf = call.text[call.stop:]
        self._raw = ""
        self._state = "between"
        self._call = None

    def _in_between(self, final: bool) -> None:
        raise NotImplementedError
