"""`@function`: a program, and running it once, streamed, or over a batch of inputs."""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from radixlm.lang import api
from radixlm.lang.backends.base import Backend, as_backend
from radixlm.lang.interpreter import Executor, StopTracing
from radixlm.lang.state import ProgramState

log = logging.getLogger(__name__)


def _backend(backend: Any) -> Backend:
    if backend is not None:
        return as_backend(backend)
    default = api.get_default_backend()
    if default is None:
        raise RuntimeError("no backend: pass backend= or call set_default_backend first")
    return default


def _common_prefix(texts: list[str]) -> str:
    return os.path.commonprefix(texts) if texts else ""  # noqa: RUF071 (strings, on purpose)


class Function:
    """A program: `fn(s, **args)` appending to a ProgramState `s`. Made by `@function`."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, s: ProgramState, *args: Any, **kwargs: Any) -> Any:
        """Run the program on an existing state (a program calling another)."""
        return self.fn(s, *args, **kwargs)

    def run(self, *args: Any, backend: Any = None, stream: bool = False, **kwargs: Any):
        """Run once and return the ProgramState.

        Without `stream` it returns after the program finished and raises its error.
        With `stream` it returns at once; the program runs in a thread, `text_iter()`
        follows it and `s[name]` waits for the variable; errors surface there.
        """
        ex = Executor(_backend(backend), stream=stream)
        state = ProgramState(ex)
        if not stream:
            self._execute(state, args, kwargs, reraise=True)
            return state
        thread = threading.Thread(
            target=self._execute, args=(state, args, kwargs, False), daemon=True
        )
        thread.start()
        return state

    def _execute(self, state: ProgramState, args: tuple, kwargs: dict, reraise: bool) -> None:
        try:
            self.fn(state, *args, **kwargs)
        except BaseException as e:
            state._ex.finish(e)
            if reraise:
                raise
            return
        state._ex.finish()

    def trace_prefix(self, backend: Backend, kwargs: dict[str, Any]) -> str | None:
        """The text the program has written when it first calls the model, run without
        calling it; None when the program fails before that (its arguments are not used)."""
        state = ProgramState(Executor(backend, tracing=True))
        try:
            self.fn(state, **kwargs)
        except StopTracing:
            pass
        except Exception:
            return None
        return state.text()

    def run_batch(
        self,
        batch_kwargs: list[dict[str, Any]],
        backend: Any = None,
        num_threads: int | str = "auto",
        progress_bar: bool = False,
        warm_prefix: bool = True,
    ) -> list[ProgramState]:
        """Run the program once per dict of arguments; return the states in order.

        A program that fails does not stop the others: its state's `error` holds the
        exception (and a warning names its index). With `warm_prefix`, the text all
        programs share before their first model call is cached first, once.
        `num_threads`: "auto" is min(len(batch), 64).
        """
        be = _backend(backend)
        if num_threads == "auto":
            num_threads = max(1, min(len(batch_kwargs), 64))
        if warm_prefix and len(batch_kwargs) > 1:
            self._warm(be, batch_kwargs)
        states = [ProgramState(Executor(be)) for _ in batch_kwargs]
        bar = None
        if progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(states), desc=self.__name__)

        def one(i: int) -> None:
            self._execute(states[i], (), batch_kwargs[i], reraise=False)
            if states[i].error is not None:
                log.warning("run_batch: item %d failed: %s", i, states[i].error)
            if bar is not None:
                bar.update(1)

        with ThreadPoolExecutor(max_workers=int(num_threads)) as pool:
            list(pool.map(one, range(len(states))))
        if bar is not None:
            bar.close()
        return states

    def _warm(self, backend: Backend, batch_kwargs: list[dict[str, Any]]) -> None:
        """Commit the prefix every program of the batch starts with (nothing when none)."""
        prefixes = [self.trace_prefix(backend, kw) for kw in batch_kwargs]
        if any(p is None for p in prefixes):
            return
        prefix = _common_prefix(prefixes)  # type: ignore[arg-type]
        if prefix:
            backend.commit_prefix(prefix)


def function(fn: Callable[..., Any]) -> Function:
    """Decorate `fn(s, ...)` as a program with `run` and `run_batch`."""
    return Function(fn)
