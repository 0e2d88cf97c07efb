"""Compiled grammars, compiled once and off the scheduler's critical path."""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from radixlm.grammar.base import GrammarBackend


class GrammarCache:
    """(kind, spec) -> a Future of the compiled grammar, for one backend (one tokenizer).

    Compiles run on a background thread, so a long compile delays only the
    requests that wait for it; the scheduler polls `Future.done()`. A failed
    compile is cached too (its Future holds the GrammarError). At most
    `max_entries` grammars are kept, the least recently used dropped first.
    Safe to call from any thread.
    """

    def __init__(self, backend: GrammarBackend, max_entries: int = 256, workers: int = 1) -> None:
        self.backend = backend
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], Future[Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="radixlm-grammar")
        self.hits = 0
        self.misses = 0

    def get(self, kind: str, spec: str) -> Future[Any]:
        """The compile of (kind, spec): cached, or started now in the background."""
        key = (kind, spec)
        with self._lock:
            fut = self._entries.get(key)
            if fut is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return fut
            self.misses += 1
            fut = self._pool.submit(self.backend.compile, kind, spec)
            self._entries[key] = fut
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return fut

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
