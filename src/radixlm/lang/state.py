"""`ProgramState`: the `s` a program appends to and reads from."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from radixlm.lang.api import as_expr
from radixlm.lang.errors import ProgramError
from radixlm.lang.interpreter import Executor
from radixlm.lang.ir import Expr, RoleBegin, RoleEnd


class ProgramState:
    """A program's text, chat turns and variables.

    `s += "text" | gen(...) | select(...) | user(...)` appends (running the model for gen
    and select); `s["name"]` reads a variable. On a streamed run (`run(stream=True)`)
    the program runs in a background thread: reads wait until the value exists, and
    `text_iter` yields text as it is produced.
    """

    def __init__(self, executor: Executor) -> None:
        self._ex = executor

    # -- appending -----------------------------------------------------------------

    def __iadd__(self, item: str | Expr) -> ProgramState:
        self._ex.execute(as_expr(item))
        return self

    def fork(self, n: int = 1) -> ForkGroup:
        """`n` states that continue from this one; the shared text is cached once first."""
        return ForkGroup(self, [ProgramState(ex) for ex in self._ex.fork(n)])

    @contextlib.contextmanager
    def _role(self, role: str) -> Iterator[ProgramState]:
        self._ex.execute(RoleBegin(role))
        yield self
        self._ex.execute(RoleEnd(role))

    def system(self) -> contextlib.AbstractContextManager[ProgramState]:
        """`with s.system(): s += "..."` writes one system turn."""
        return self._role("system")

    def user(self) -> contextlib.AbstractContextManager[ProgramState]:
        """`with s.user(): s += "..."` writes one user turn."""
        return self._role("user")

    def assistant(self) -> contextlib.AbstractContextManager[ProgramState]:
        """`with s.assistant(): s += gen(...)` writes one assistant turn."""
        return self._role("assistant")

    # -- reading -------------------------------------------------------------------

    def text(self) -> str:
        """All text so far (the prompt of the next model call), role markers included."""
        return self._ex.text

    def messages(self) -> list[dict[str, str]]:
        """The finished chat turns as `{"role", "content"}` dicts."""
        return [dict(m) for m in self._ex.messages]

    def __getitem__(self, name: str) -> Any:
        """The value of variable `name`; on a streamed run, waits until it is set.

        Raises KeyError when the program finished without setting it, and re-raises
        the program's error when it failed first.
        """
        ex = self._ex
        with ex.cond:
            ex.cond.wait_for(lambda: name in ex.variables or ex.done)
            if name in ex.variables:
                return ex.variables[name]
        if ex.error is not None:
            raise ex.error
        raise KeyError(name)

    def get_var(self, name: str) -> Any:
        return self[name]

    def set_var(self, name: str, value: Any) -> None:
        """Set variable `name` without generating (e.g. a value computed in Python)."""
        self._ex._set_var(name, value, None)

    def get_meta_info(self, name: str) -> dict[str, Any]:
        """The backend's meta info of the gen (tokens, cached tokens) or select (scores)."""
        self[name]
        return self._ex.meta.get(name, {})

    def __contains__(self, name: str) -> bool:
        return name in self._ex.variables

    @property
    def error(self) -> BaseException | None:
        """The exception the program raised, or None (also None while still running)."""
        return self._ex.error

    def sync(self) -> ProgramState:
        """Wait until the program has finished; returns self (raises nothing)."""
        ex = self._ex
        with ex.cond:
            ex.cond.wait_for(lambda: ex.done)
        return self

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        """Yield the program's text piece by piece (only variable `var_name`'s when given).

        Ends when the program finishes, or when `var_name` is complete. Raises the
        program's error at the end if it failed.
        """
        ex, index = self._ex, 0
        while True:
            with ex.cond:
                ex.cond.wait_for(
                    lambda i=index: len(ex.events) > i or ex.done or var_name in ex.finished_vars
                )
                new, index = ex.events[index:], len(ex.events)
                finished = ex.done or (var_name is not None and var_name in ex.finished_vars)
            for var, piece in new:
                if var_name is None or var == var_name:
                    yield piece
            if finished:
                break
        if ex.done and ex.error is not None and var_name not in ex.variables:
            raise ex.error

    def __repr__(self) -> str:
        return f"ProgramState(text={self._ex.text[-60:]!r}, vars={sorted(self._ex.variables)})"


class ForkGroup(list):
    """The states `fork(n)` returns; `join` brings their results back to the parent."""

    def __init__(self, parent: ProgramState, states: list[ProgramState]) -> None:
        super().__init__(states)
        self.parent = parent
        self._base = {name: states[0]._ex.variables.get(name) for name in states[0]._ex.variables}
        self._base_len = len(parent.text())

    def join(self, mode: str = "gather") -> ProgramState:
        """Bring the forks' results back to the parent; returns the parent.

        `gather`: each variable a fork set or changed becomes, in the parent, the list of
        every fork's value. `concat`: the text each fork added is appended to the parent's.
        """
        if mode == "concat":
            for state in self:
                self.parent += state.text()[self._base_len :]
            return self.parent
        if mode != "gather":
            raise ValueError("join mode must be 'gather' or 'concat'")
        names: dict[str, None] = {}
        for state in self:
            for name, value in state._ex.variables.items():
                if name not in self._base or self._base[name] is not value:
                    names[name] = None
        for name in names:
            values = [state._ex.variables.get(name) for state in self]
            self.parent.set_var(name, values)
        return self.parent


def fork(s: ProgramState, n: int = 1) -> ForkGroup:
    """`s.fork(n)` as a function."""
    return s.fork(n)


def join(forks: ForkGroup, mode: str = "gather") -> ProgramState:
    """`forks.join(mode)` as a function."""
    if not isinstance(forks, ForkGroup):
        raise ProgramError("join takes the group that fork returned")
    return forks.join(mode)
