"""The one loop: messages in, scheduler steps, chunks out; the same for both doors.

Each turn: take the messages that arrived (new requests, aborts, control calls),
expire requests that waited past the queue timeout, run one scheduler step, and
send what it produced. When idle it checks the KV pool's integrity once. When a
step raises (the scheduler could not repair a failed batch) it ends every request
in flight with an error and re-raises: the engine must not step again.

The loop knows no transport: `receive(timeout_s)` returns the messages that came
(waiting at most that long when there are none), `send(msgs)` hands a list of
`ChunkMsg` / `ErrorMsg` / `ReplyMsg` to the callers. The engine process plugs
ZeroMQ sockets in; the offline `Engine` a queue and per-request handles.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from radixlm.engine.messages import AbortMsg, ControlMsg, ErrorMsg, GenerateMsg, ReplyMsg
from radixlm.engine.requests import to_req
from radixlm.engine.results import ResultShaper
from radixlm.kvcache.snapshot import tree_snapshot
from radixlm.scheduler.request import FinishReason
from radixlm.scheduler.scheduler import Scheduler
from radixlm.tokenizer import Tokenizer
from radixlm.trace.writer import TraceWriter

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.2  # how long an idle loop waits for a message before looking around


class EngineLoop:
    """Owns the scheduler; `run()` returns when told to shut down or `alive()` turns False.

    `queue_timeout` (seconds): a request never admitted after that long is aborted.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        tokenizer: Tokenizer | None,
        receive: Callable[[float], list[Any]],
        send: Callable[[list[Any]], None],
        queue_timeout: float | None = None,
        trace: TraceWriter | None = None,
    ) -> None:
        self.sched = scheduler
        self.trace = trace  # one line per finished request, when on
        self.steps = 0  # scheduler steps run: the trace's arrival clock
        self.receive, self.send = receive, send
        self.queue_timeout = queue_timeout
        self.shaper = ResultShaper(tokenizer)
        self.stopping = False
        self.integrity_error: str | None = None  # the last failed idle check

    def run(self, alive: Callable[[], bool] = lambda: True) -> None:
        idle_checked = True
        while not self.stopping:
            if not alive():
                log.warning("the callers are gone; the engine loop ends")
                return
            busy = self.sched.has_work()
            msgs = self.receive(0 if busy else IDLE_WAIT_S)
            self._send([reply for m in msgs for reply in self.handle(m)])
            if self.stopping:
                break
            if not self.sched.has_work():
                if not idle_checked:
                    self._idle_check()
                    idle_checked = True
                continue
            idle_checked = False
            self._expire_waiting()
            try:
                outputs = self.sched.step()
            except Exception as e:  # the scheduler cannot be trusted: fail everything, stop
                log.exception("the scheduler failed beyond repair; the engine stops")
                self.fail_all(f"{type(e).__name__}: {e}")
                raise
            self.steps += 1
            if self.trace is not None:
                self.trace.finished([o.req for o in outputs if o.finished])
            self._send([self.shaper.shape(o) for o in outputs])

    def fail_all(self, message: str) -> None:
        """End every request in flight with a 500 (the loop is about to stop)."""
        text = f"internal error: the engine failed and stops ({message})"
        self._send([ErrorMsg(rid, text, 500) for rid in self.shaper.unfinished()])

    # -- messages in --------------------------------------------------------------

    def handle(self, msg: Any) -> list[Any]:
        """Apply one incoming message; return the messages to send back."""
        if isinstance(msg, GenerateMsg):
            return self._add(msg)
        if isinstance(msg, AbortMsg):
            for req in self.sched.in_flight():  # the rid, or every sample of a call with n > 1
                if msg.rid is None or msg.rid in (req.rid, req.parent_rid):
                    self.sched.abort(req.rid)
            return []
        if isinstance(msg, ControlMsg):
            return self._control(msg)
        log.error("unknown message %r", type(msg).__name__)
        return []

    def _add(self, msg: GenerateMsg) -> list[Any]:
        try:  # the params were checked where the request was built
            self.sched.add_request(to_req(msg))
        except ValueError as e:
            return [ErrorMsg(msg.rid, str(e))]
        if self.trace is not None:
            self.trace.arrived(msg.rid, self.steps)
        self.shaper.start(msg)
        return []

    def _control(self, msg: ControlMsg) -> list[Any]:
        try:
            if msg.kind == "shutdown":
                self.stopping = True
                for req in self.sched.in_flight():
                    self.sched.abort(req.rid)
                return []
            if msg.kind == "get_stats":
                stats = self.sched.stats_snapshot()
                result: Any = {**stats, "integrity_error": self.integrity_error}
            elif msg.kind == "flush_cache":
                result = self.sched.flush_cache()
            elif msg.kind == "cache_snapshot":  # the live cache view (bounded: kvcache.snapshot)
                result = {**tree_snapshot(self.sched.kv.cache, self.sched.usage),
                          "stats": self.sched.stats_snapshot()}  # fmt: skip
            elif msg.kind == "check_integrity":
                self.sched.check_integrity()
                result = True
            else:
                return [ReplyMsg(msg.cid, error=f"unknown control call {msg.kind!r}")]
        except Exception as e:
            return [ReplyMsg(msg.cid, error=str(e))]
        return [ReplyMsg(msg.cid, result=result)]

    def _expire_waiting(self) -> None:
        """Abort requests that have waited in the queue, never admitted, past the timeout."""
        if self.queue_timeout is None:
            return
        now = time.perf_counter()
        for req in list(self.sched.waiting):
            if not req.admitted_once and now - req.created_at > self.queue_timeout:
                message = f"queue timeout: waited more than {self.queue_timeout:g} s"
                req.finish(FinishReason("abort", message=message))  # abort keeps this reason
                self.sched.abort(req.rid)

    # -- messages out -------------------------------------------------------------

    def _send(self, msgs: list[Any]) -> None:
        if msgs:
            self.send(msgs)

    def _idle_check(self) -> None:
        try:
            self.sched.check_integrity()
        except Exception as e:
            self.integrity_error = str(e)
            log.error("KV integrity check failed: %s", e)
