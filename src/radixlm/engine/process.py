"""The engine process: the scheduler loop behind two ZeroMQ sockets.

The HTTP process spawns `run_engine_process` (multiprocessing, spawn context).
It loads the model, the tokenizer, the KV pool and the prefix cache, tells the
parent it is ready over a pipe, and then loops: drain incoming messages (new
requests, aborts, control calls), run one scheduler step, send what it produced.

Detokenization stays here: the scheduler's finisher already turns tokens into
text deltas with stop strings trimmed, so each `ChunkMsg` carries the new text
and the HTTP process only concatenates. Tokenization and chat templates happen
in the HTTP process.

One thread touches the scheduler and both sockets. The loop exits on a
"shutdown" control message, or when the parent process is gone (no orphans).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import zmq

from radixlm.engine.config import build_engine_config
from radixlm.engine.messages import (
    AbortMsg,
    ChunkMsg,
    ControlMsg,
    ErrorMsg,
    GenerateMsg,
    ReadyMsg,
    ReplyMsg,
)
from radixlm.engine.output import request_meta
from radixlm.engine.setup import Runtime, build_runtime
from radixlm.sampling.params import SamplingParams
from radixlm.scheduler.request import FinishReason, Req
from radixlm.scheduler.scheduler import StepOutput

log = logging.getLogger(__name__)

IDLE_POLL_MS = 200


def model_info(rt: Runtime) -> dict[str, Any]:
    """What the HTTP process needs to know about the loaded model and the KV pool."""
    c = rt.loaded.config
    return {
        "model_path": str(rt.loaded.path),
        "architecture": c.architecture,
        "dtype": str(rt.loaded.dtype).removeprefix("torch."),
        "device": str(rt.loaded.device),
        "weights_mib": rt.loaded.memory_bytes / 2**20,
        "context_length": c.context_length,
        "vocab_size": c.vocab_size,
        "max_total_tokens": rt.scheduler.kv.pool.total,
        "max_request_tokens": rt.scheduler.capacity,
        "pid": os.getpid(),
    }


class EngineLoop:
    """Owns the runtime and both sockets; `run()` returns when told to shut down."""

    def __init__(
        self, rt: Runtime, inbox: zmq.Socket, outbox: zmq.Socket, queue_timeout: float | None = None
    ) -> None:
        self.rt = rt
        self.queue_timeout = queue_timeout  # seconds a never-admitted request may wait
        self.sched = rt.scheduler
        self.inbox, self.outbox = inbox, outbox
        self.with_text: dict[str, bool] = {}  # rid -> return_text_in_logprobs
        self.sent_lp: dict[str, int] = {}  # rid -> output logprob entries already sent
        self.parent = os.getppid()
        self.stopping = False
        self.integrity_error: str | None = None

    def run(self) -> None:
        idle_checked = True
        while not self.stopping:
            busy = self.sched.has_work()
            self._drain(0 if busy else IDLE_POLL_MS)
            if self.stopping:
                break
            if not self.sched.has_work():
                if not idle_checked:
                    self._idle_check()
                    idle_checked = True
                if os.getppid() != self.parent:
                    log.warning("the server process is gone; the engine exits")
                    return
                continue
            idle_checked = False
            self._expire_waiting()
            try:
                outputs = self.sched.step()
            except Exception as e:  # the scheduler cannot be trusted: fail everything, exit
                log.exception("the scheduler failed beyond repair; the engine exits")
                self._fail_all(f"{type(e).__name__}: {e}")
                raise
            self._send([self._message(o) for o in outputs])

    # -- messages in --------------------------------------------------------------

    def _drain(self, timeout_ms: int) -> None:
        if not self.inbox.poll(timeout_ms):
            return
        replies: list[Any] = []
        while True:
            try:
                msg = self.inbox.recv_pyobj(zmq.NOBLOCK)
            except zmq.Again:
                break
            replies.extend(self._handle(msg))
        self._send(replies)

    def _handle(self, msg: Any) -> list[Any]:
        """Apply one incoming message; return the messages to send back."""
        if isinstance(msg, GenerateMsg):
            return self._add(msg)
        if isinstance(msg, AbortMsg):
            live = self._live_rids()
            if msg.rid is not None:  # the rid itself, or its n samples "rid-0", "rid-1", ...
                live = [r for r in live if r == msg.rid or r.startswith(msg.rid + "-")]
            for rid in live:
                self.sched.abort(rid)
            return []
        if isinstance(msg, ControlMsg):
            return self._control(msg)
        log.error("unknown message %r", type(msg).__name__)
        return []

    def _add(self, msg: GenerateMsg) -> list[Any]:
        try:
            params = SamplingParams.from_dict(msg.sampling_params)
            params.check_vocab(self.rt.loaded.config.vocab_size)
            req = Req(
                rid=msg.rid,
                input_ids=list(msg.input_ids),
                params=params,
                return_logprob=msg.return_logprob,
                logprob_start_len=msg.logprob_start_len,
                top_logprobs_num=msg.top_logprobs_num,
                extra_key=msg.extra_key,
            )
            self.sched.add_request(req)
        except ValueError as e:
            return [ErrorMsg(msg.rid, str(e))]
        self.with_text[msg.rid] = msg.return_text_in_logprobs
        self.sent_lp[msg.rid] = 0
        return []

    def _control(self, msg: ControlMsg) -> list[Any]:
        try:
            if msg.kind == "shutdown":
                self.stopping = True
                for rid in self._live_rids():
                    self.sched.abort(rid)
                return []
            if msg.kind == "get_stats":
                result: Any = {
                    **self.sched.stats_snapshot(),
                    "integrity_error": self.integrity_error,
                }
            elif msg.kind == "flush_cache":
                result = self.sched.flush_cache()
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

    def _live_rids(self) -> list[str]:
        s = self.sched
        return [r.rid for r in [*s.waiting, *s.running, *([s.chunked] if s.chunked else [])]]

    # -- messages out -------------------------------------------------------------

    def _send(self, msgs: list[Any]) -> None:
        if msgs:
            self.outbox.send_pyobj(msgs)

    def _message(self, out: StepOutput) -> ChunkMsg | ErrorMsg:
        """The chunk of one step output, or the error of a request whose batch failed."""
        reason = out.req.finish_reason
        if out.finished and reason is not None and reason.is_error:
            self.with_text.pop(out.req.rid, None)
            self.sent_lp.pop(out.req.rid, None)
            return ErrorMsg(out.req.rid, reason.message or "internal error", reason.status_code)
        return self._chunk(out)

    def _chunk(self, out: StepOutput) -> ChunkMsg:
        r = out.req
        meta = request_meta(r)
        chunk = ChunkMsg(r.rid, out.text, list(out.new_ids), out.finished, meta)
        if r.return_logprob:
            start = self.sent_lp.get(r.rid, 0)
            chunk.output_logprobs = self._entries(r.rid, r.output_logprobs[start:])
            tops = r.output_top_logprobs[start:]
            chunk.output_top_logprobs = [self._entries(r.rid, t or []) for t in tops]
            self.sent_lp[r.rid] = len(r.output_logprobs)
        if out.finished:
            if r.return_logprob:
                chunk.final_logprobs = self._final_logprobs(r)
            self.with_text.pop(r.rid, None)
            self.sent_lp.pop(r.rid, None)
        return chunk

    def _final_logprobs(self, r: Req) -> dict[str, Any]:
        top = [None if t is None else self._entries(r.rid, t) for t in r.input_top_logprobs]
        out_top = [None if t is None else self._entries(r.rid, t) for t in r.output_top_logprobs]
        return {
            "input_token_logprobs": self._entries(r.rid, r.input_logprobs),
            "output_token_logprobs": self._entries(r.rid, r.output_logprobs),
            "input_top_logprobs": top,
            "output_top_logprobs": out_top,
        }

    def _entries(self, rid: str, pairs: list[tuple[float | None, int]]) -> list[list[Any]]:
        """`[logprob, token_id, text_or_null]` for each pair."""
        tok = self.rt.tokenizer if self.with_text.get(rid) else None
        return [
            [lp, tid, None if tok is None else tok.decode([tid], skip_special_tokens=False)]
            for lp, tid in pairs
        ]

    def _idle_check(self) -> None:
        try:
            self.sched.check_integrity()
        except Exception as e:
            self.integrity_error = str(e)
            log.error("KV integrity check failed: %s", e)

    def _fail_all(self, message: str) -> None:
        """End every request in flight with a 500 (the engine is about to exit)."""
        text = f"internal error: the engine failed and exits ({message})"
        self._send([ErrorMsg(rid, text, 500) for rid in self._live_rids()])


def run_engine_process(
    options: dict[str, Any],
    in_addr: str,
    out_addr: str,
    ready_conn: Any,
    log_level: str,
    queue_timeout: float | None = None,
) -> None:
    """Process entry point: build the runtime from engine `options`, serve until shutdown.

    `queue_timeout` (seconds): a request waiting longer than that is aborted.

    Sends one `ReadyMsg` on `ready_conn` (with the model info, or the load error).
    SIGINT is ignored: the parent decides when the engine stops.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s engine: %(message)s"
    )
    ctx = zmq.Context()
    inbox, outbox = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        inbox.bind(in_addr)
        outbox.bind(out_addr)
        rt = build_runtime(build_engine_config(**options))
    except Exception as e:
        ready_conn.send(ReadyMsg(error=f"{type(e).__name__}: {e}"))
        ctx.destroy(linger=0)
        return
    ready_conn.send(ReadyMsg(info=model_info(rt)))
    ready_conn.close()
    try:
        EngineLoop(rt, inbox, outbox, queue_timeout).run()
    finally:
        ctx.destroy(linger=1000)  # lets the last errors reach the server
