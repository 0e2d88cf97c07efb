"""One tool call written as a JSON object, read as its text streams in.

`CallStream` is fed the text of `{"name": ..., "arguments": {...}}` (whatever follows the
object is left for the caller) and decides, on each prefix, three things that never
change once decided:

* *committed*: the name is a complete string naming a listed tool and the arguments
  object has begun. From then on the call is a call, and its arguments stream out.
* the arguments emitted so far: the longest prefix of the model's own arguments text that
  `partial-json-parser` can complete by *appending* alone, so no fragment is taken back.
  When the object is complete they are exactly the model's arguments text.
* *done*: the object closed, or broke (text that no JSON continues), or the stream ended.
  A committed call that breaks or is cut short keeps its arguments, closed by appending
  what `partial-json-parser` says is missing (so they always parse); an uncommitted one
  is no call at all, and its caller turns the text back into content.

Every decision depends on the text alone, never on how it was split into chunks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from partial_json_parser import fix

_DECODER = json.JSONDecoder()
_WS = re.compile(r"[ \t\n\r]*")
_NUMBER_TAIL = re.compile(r"[0-9.eE+\-]*")  # what may still extend a number at the buffer's end
NAME_KEYS = ("name",)
ARG_KEYS = ("arguments", "parameters")


@dataclass
class _Walk:
    """A scan of an object's text: `status` is open / complete / broken; `members` maps
    key -> (value start, value end or None while the value is unfinished, value);
    `stop` is the offset past the object (complete) or of the offending character (broken)."""

    status: str
    members: dict[str, tuple[int, int | None, Any]]
    stop: int = 0


def _ws(text: str, i: int) -> int:
    return _WS.match(text, i).end()  # type: ignore[union-attr]


def is_json_prefix(text: str) -> bool:
    """Whether some continuation makes `text` (one JSON value's start) valid JSON."""
    if not text.strip():
        return True
    try:
        head, tail = fix(text)
        json.loads(head + tail)  # the library lets some bad escapes through (`\u0e9"`)
    except Exception:  # MalformedJSON, JSONDecodeError, or the library's own IndexError
        return False
    return True


def longest_json_prefix(text: str) -> str:
    """The longest prefix of `text` that is a JSON prefix (validity only shrinks as text
    grows, so a binary search finds it)."""
    if is_json_prefix(text):
        return text
    lo, hi = 0, len(text)  # text[:lo] is a prefix, text[:hi] is not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if is_json_prefix(text[:mid]):
            lo = mid
        else:
            hi = mid
    return text[:lo]


def walk_object(text: str) -> _Walk:
    """Scan `text`, the start of a JSON object, as far as it goes."""
    members: dict[str, tuple[int, int | None, Any]] = {}
    i = _ws(text, 0)
    if i == len(text):
        return _Walk("open", members)
    if text[i] != "{":
        return _Walk("broken", members, i)
    i = _ws(text, i + 1)
    if text[i:i + 1] == "}":
        return _Walk("complete", members, i + 1)
    while True:
        i = _ws(text, i)
        if i == len(text):
            return _Walk("open", members)
        if text[i] != '"':
            return _Walk("broken", members, i)
        try:
            key, i = _DECODER.raw_decode(text, i)
        except json.JSONDecodeError:
            return _Walk("open" if is_json_prefix(text[i:]) else "broken", members, i)
        i = _ws(text, i)
        if i == len(text):
            return _Walk("open", members)
        if text[i] != ":":
            return _Walk("broken", members, i)
        start = _ws(text, i + 1)
        if start == len(text):
            return _Walk("open", members)
        try:
            value, i = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError:
            members[key] = (start, None, None)
            return _Walk("open" if is_json_prefix(text[start:]) else "broken", members, start)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and _NUMBER_TAIL.fullmatch(text, i):
            members[key] = (start, None, None)  # `12` may yet be `123`
            return _Walk("open", members)
        members[key] = (start, i, value)
        i = _ws(text, i)
        if i == len(text):
            return _Walk("open", members)
        if text[i] == "}":
            return _Walk("complete", members, i + 1)
        if text[i] != ",":
            return _Walk("broken", members, i)
        i += 1


def _closing(prefix: str) -> str | None:
    """What appended to `prefix` makes it parse (per `fix`), or None when appending alone
    cannot (a trailing comma, half a literal or escape)."""
    try:
        _, tail = fix(prefix)
        json.loads(prefix + tail)
    except Exception:
        return None
    return tail


def closable_prefix(prefix: str) -> str:
    """The longest start of JSON prefix `prefix` that appending alone can close: `prefix`
    itself, or where `fix` cuts it."""
    if _closing(prefix) is not None:
        return prefix
    try:
        head, _ = fix(prefix)
    except Exception:
        return ""
    return head


def close_json(prefix: str) -> str:
    """What to append to `prefix` (from `closable_prefix`) so it parses ('' if nothing can)."""
    return _closing(prefix) or ""


class CallStream:
    """Reads one JSON call object; see the module docstring for what it decides when."""

    def __init__(self, names: Collection[str] | None) -> None:
        self.names = names  # None: any name is a tool's
        self.text = ""
        self.committed = False
        self.done = False
        self.name: str | None = None
        self.stop = 0  # once done: where the object's text ended (or broke)
        self._emitted = ""  # arguments text given out so far

    @property
    def arguments(self) -> str:
        """The arguments text emitted so far (final once `done` and committed)."""
        return self._emitted

    def feed(self, text: str) -> str:
        """Add `text`; returns the arguments text that became certain ('' before commit)."""
        if self.done:
            raise RuntimeError("the call is finished")
        self.text += text
        walk = walk_object(self.text)
        name = walk.members.get(NAME_KEYS[0])
        args_key = next((k for k in ARG_KEYS if k in walk.members), None)
        args = walk.members.get(args_key) if args_key else None
        if not self.committed and self._may_commit(name, args):
            self.committed, self.name = True, name[2]
        out = self._advance(args) if self.committed else ""
        if walk.status == "complete":
            out += self._complete(walk, name, args)
        elif walk.status == "broken":
            self.done, self.stop = True, walk.stop
            out += self._close()
        return out

    def _may_commit(self, name: Any, args: Any) -> bool:
        """A complete listed name, and an arguments object that has begun."""
        if name is None or name[1] is None or not isinstance(name[2], str):
            return False
        if self.names is not None and name[2] not in self.names:
            return False
        return args is not None and self.text[args[0]] == "{"

    def finish(self) -> str:
        """The stream ended: returns the text that closes a committed call's arguments."""
        if self.done:
            return ""
        self.done, self.stop = True, len(self.text)
        return self._close()

    def _advance(self, args: tuple[int, int | None, Any] | None) -> str:
        assert args is not None
        start, end, _ = args
        if end is not None:
            target = self.text[start:end]
        else:
            target = closable_prefix(longest_json_prefix(self.text[start:]))
        if not target.startswith(self._emitted):
            return ""
        new = target[len(self._emitted):]
        self._emitted = target
        return new

    def _complete(self, walk: _Walk, name: Any, args: Any) -> str:
        """The object closed: a listed name commits now even without an arguments object
        (none at all: `{}`; a JSON string holding an object: that object)."""
        self.done, self.stop = True, walk.stop
        if self.committed:
            return ""
        if name is None or not isinstance(name[2], str):
            return ""
        if self.names is not None and name[2] not in self.names:
            return ""
        if args is None:
            text = "{}"
        elif isinstance(args[2], str):
            try:
                inner = json.loads(args[2])
            except json.JSONDecodeError:
                return ""
            if not isinstance(inner, dict):
                return ""
            text = json.dumps(inner, ensure_ascii=False)
        else:
            return ""  # arguments that are neither an object nor a string holding one
        self.committed, self.name, self._emitted = True, name[2], text
        return text

    def _close(self) -> str:
        if not self.committed:
            return ""
        tail = close_json(self._emitted)
        self._emitted += tail
        return tail
