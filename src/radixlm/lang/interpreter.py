"""Executing expressions against a backend: the text, the turns, the variables, the stream.

One `Executor` belongs to one program state and is driven by the thread that runs the
program. Readers in other threads (`text_iter`, `s["x"]` on a streamed run) wait on its
condition variable; every field they read is written under that lock.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from radixlm.lang.backends.base import Backend, Context
from radixlm.lang.errors import ProgramError
from radixlm.lang.ir import Expr, Gen, RoleBegin, RoleEnd, Select, Sequence, Text

DEFAULT_MAX_TOKENS = 128


class StopTracing(Exception):
    """Raised at the first model call of a traced run (see `Executor(tracing=True)`)."""


class Executor:
    """The state of one program run; see the module docstring.

    `stream`: generate with the backend's streaming call, so `text_iter` sees text as it
    comes. `tracing`: make no model calls; the first gen, select or fork raises
    StopTracing (used to find the prompt a batch's programs start with).
    """

    def __init__(self, backend: Backend, stream: bool = False, tracing: bool = False) -> None:
        self.backend = backend
        self.stream = stream
        self.tracing = tracing
        self.text = ""
        self.messages: list[dict[str, str]] = []
        self.variables: dict[str, Any] = {}
        self.meta: dict[str, dict[str, Any]] = {}
        self.role: str | None = None
        self.role_start = 0  # where the open turn's content starts in `text`
        self.started_chat = False
        # (variable name or None, text piece) for every piece of text, in order.
        self.events: list[tuple[str | None, str]] = []
        self.finished_vars: set[str] = set()
        self.done = False
        self.error: BaseException | None = None
        self.cond = threading.Condition()

    # -- writing -------------------------------------------------------------------

    def _append(self, piece: str, var: str | None = None) -> None:
        with self.cond:
            self.text += piece
            self.events.append((var, piece))
            self.cond.notify_all()

    def _set_var(self, name: str | None, value: Any, meta: dict[str, Any] | None) -> None:
        if name is None:
            return
        with self.cond:
            self.variables[name] = value
            if meta is not None:
                self.meta[name] = meta
            self.finished_vars.add(name)
            self.cond.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        """Mark the run finished (with `error` when the program raised)."""
        with self.cond:
            self.done = True
            self.error = error
            self.cond.notify_all()

    # -- expressions ---------------------------------------------------------------

    def execute(self, expr: Expr) -> None:
        """Append `expr` to the state, calling the backend for gen and select."""
        if isinstance(expr, Text):
            self._append(expr.text)
        elif isinstance(expr, Sequence):
            for item in expr.items:
                self.execute(item)
        elif isinstance(expr, RoleBegin):
            self._begin_role(expr.role)
        elif isinstance(expr, RoleEnd):
            self._end_role(expr.role)
        elif isinstance(expr, Gen):
            self._gen(expr)
        elif isinstance(expr, Select):
            self._select(expr)
        else:
            raise TypeError(f"cannot execute {expr!r}")

    def _begin_role(self, role: str) -> None:
        if self.role is not None:
            raise ProgramError(f"a {role} turn cannot start inside the open {self.role} turn")
        template = self.backend.chat_template
        if not self.started_chat and role != "system" and template.default_system_prompt:
            self._begin_role("system")
            self._append(template.default_system_prompt)
            self._end_role("system")
        self.started_chat = True
        self._append(template.prefix(role))
        self.role, self.role_start = role, len(self.text)

    def _end_role(self, role: str) -> None:
        if self.role != role:
            raise ProgramError(f"ending a {role} turn, but the open turn is {self.role}")
        content = self.text[self.role_start :]
        self.messages.append({"role": role, "content": content})
        self.role = None
        self._append(self.backend.chat_template.suffix(role))

    def context(self) -> Context:
        """The request context for the backend: text, finished turns, the open turn."""
        open_content = self.text[self.role_start :] if self.role else ""
        return Context(self.text, tuple(self.messages), self.role, open_content)

    def _gen(self, expr: Gen) -> None:
        if self.tracing:
            raise StopTracing
        options = expr.options
        if self.role == "assistant" and self.backend.chat_template.stop:
            extra = tuple(s for s in self.backend.chat_template.stop if s not in options.stop)
            options = dataclasses.replace(options, stop=options.stop + extra)
        params = options.to_sampling_params(DEFAULT_MAX_TOKENS)
        ctx = self.context()
        if self.stream:
            pieces = self.backend.generate_stream(ctx, params)
            while True:
                try:
                    piece = next(pieces)
                except StopIteration as stop:
                    out = stop.value
                    break
                self._append(piece, expr.name)
        else:
            out = self.backend.generate(ctx, params)
            self._append(out.text, expr.name)
        self._set_var(expr.name, expr.parse(out.text), out.meta)

    def _select(self, expr: Select) -> None:
        if self.tracing:
            raise StopTracing
        result = self.backend.select(self.context(), list(expr.choices), expr.method)
        self._append(result.choice, expr.name)
        self._set_var(expr.name, result.choice, result.meta())

    # -- forks ---------------------------------------------------------------------

    def fork(self, n: int) -> list[Executor]:
        """`n` copies of this state; the shared text is committed to the cache first."""
        if self.tracing:
            raise StopTracing
        if n < 1:
            raise ValueError("fork needs n >= 1")
        if n > 1:
            self.backend.commit_prefix(self.text)
        return [self._copy() for _ in range(n)]

    def _copy(self) -> Executor:
        child = Executor(self.backend, stream=False)
        child.text, child.messages = self.text, list(self.messages)
        child.variables, child.meta = dict(self.variables), dict(self.meta)
        child.role, child.role_start = self.role, self.role_start
        child.started_chat = self.started_chat
        return child
