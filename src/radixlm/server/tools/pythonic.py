"""Pythonic tool calls: `[get_weather(city="Paris"), get_time()]` (Llama 3.2 / 4 style).

The list is held back until its closing bracket, then read with `ast` (no code runs:
only literals are accepted as argument values), so its calls come out whole, each with
its arguments as a JSON object. Output that does not begin with such a list, or whose
list does not parse, is content.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from radixlm.server.tools.base import ToolParser

_HEAD = re.compile(r"\s*\[\s*[A-Za-z_][\w.]*\s*")  # `[name` (then `(` must follow)
_HEAD_PREFIX = re.compile(r"\s*(\[\s*([A-Za-z_][\w.]*)?)?")


def _list_end(text: str) -> int:
    """The offset past the bracket that closes the list `text` opens; -1 if not yet."""
    depth, quote, i = 0, "", 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def _calls(source: str) -> list[tuple[str, dict[str, Any]]] | None:
    """[(name, arguments)] of a list of calls with literal keyword arguments, else None."""
    try:
        tree = ast.parse(source.strip(), mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(tree, ast.List) or not tree.elts:
        return None
    out = []
    for node in tree.elts:
        if not isinstance(node, ast.Call) or node.args or not isinstance(node.func, ast.Name):
            return None
        try:
            args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
        except (ValueError, SyntaxError, TypeError):
            return None
        if None in args:  # **kwargs
            return None
        out.append((node.func.id, args))
    return out


class PythonicParser(ToolParser):
    """See the module docstring."""

    name = "pythonic"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._buf = ""
        self._plain = False

    def _scan(self, text: str, final: bool) -> None:
        self._buf += text
        if self._plain:
            self._content(self._buf)
            self._buf = ""
            return
        head = _HEAD.match(self._buf)
        maybe = head is None and _HEAD_PREFIX.fullmatch(self._buf) is not None
        if head is not None and head.end() < len(self._buf) and self._buf[head.end()] != "(":
            head, maybe = None, False
        if head is None and not (maybe and not final):
            self._give_up()
            return
        end = _list_end(self._buf.lstrip()) if head is not None else -1
        if end < 0:
            if final:
                self._give_up()
            return
        lead = len(self._buf) - len(self._buf.lstrip())
        calls = _calls(self._buf[: lead + end])
        if calls is None or (self.names is not None and any(n not in self.names for n, _ in calls)):
            self._give_up()
            return
        for name, args in calls:
            self._args(self._header(name), json.dumps(args, ensure_ascii=False))
        rest = self._buf[lead + end:]
        self._buf, self._plain = "", True
        self._content(rest)

    def _give_up(self) -> None:
        self._content(self._buf)
        self._buf, self._plain = "", True
