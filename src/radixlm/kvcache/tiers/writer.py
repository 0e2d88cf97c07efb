"""A background thread that runs a tier's disk work off the scheduler's thread.

`submit(job, nbytes)` queues a callable and returns at once: False (the job
dropped) when the queue already holds `max_jobs` jobs or `max_bytes` of
payload, so a slow disk never stalls a decode step. Jobs run one at a time,
in order. The thread is not a daemon: when the interpreter (or an engine
process) exits, it finishes what is queued, then stops.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

_POLL_S = 0.2  # how often an idle writer checks whether the program is exiting


class BackgroundWriter:
    def __init__(self, max_jobs: int = 1024, max_bytes: int = 256 << 20, name: str = "") -> None:
        self.max_bytes = max_bytes
        self._queue: queue.Queue[tuple[Callable[[], None], int] | None] = queue.Queue(max_jobs)
        self._lock = threading.Lock()
        self._pending_bytes = 0
        self._idle = threading.Condition(self._lock)
        self._unfinished = 0
        self.dropped = 0  # jobs refused because the queue was full
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name or "radixlm-tier-writer")
        self._thread.start()

    def submit(self, job: Callable[[], None], nbytes: int = 0) -> bool:
        """Queue `job` (holding about `nbytes` of data); False, and nothing queued, when full."""
        with self._lock:
            if self._closed or (self._pending_bytes + nbytes > self.max_bytes and nbytes):
                self.dropped += 1
                return False
            try:
                self._queue.put_nowait((job, nbytes))
            except queue.Full:
                self.dropped += 1
                return False
            self._pending_bytes += nbytes
            self._unfinished += 1
        return True

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every queued job has run; False if `timeout` seconds passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._unfinished == 0, timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Run what is queued, then stop the thread (later submits are dropped)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if not threading.main_thread().is_alive():
                    return  # the program is exiting and nothing is left to write
                continue
            if item is None:
                return
            job, nbytes = item
            try:
                job()
            except Exception:
                log.exception("a cache tier write failed")
            with self._idle:
                self._pending_bytes -= nbytes
                self._unfinished -= 1
                self._idle.notify_all()
