"""The engine process: the engine loop (`engine.loop`) behind two ZeroMQ sockets.

The HTTP process spawns `run_engine_process` (multiprocessing, spawn context).
It loads the model, the tokenizer, the KV pool and the prefix cache, tells the
parent it is ready over a pipe, and then runs the loop with the "requests"
socket as its inbox and the "outputs" socket as its outbox.

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
from collections.abc import Callable
from typing import Any

import zmq

from radixlm.config import EngineConfig
from radixlm.distributed.plan import exit_now, send_stop
from radixlm.engine.loop import EngineLoop
from radixlm.engine.messages import ModelInfo, ReadyMsg
from radixlm.engine.setup import Runtime, build_runtime

log = logging.getLogger(__name__)


def model_info(rt: Runtime) -> ModelInfo:
    """What the HTTP process needs to know about the loaded model and the KV pool."""
    c = rt.loaded.config
    return ModelInfo(
        model_path=str(rt.loaded.path),
        architecture=c.architecture,
        dtype=str(rt.loaded.dtype).removeprefix("torch."),
        device=str(rt.loaded.device),
        weights_mib=rt.loaded.memory_bytes / 2**20,
        context_length=c.context_length,
        vocab_size=c.vocab_size,
        max_total_tokens=rt.scheduler.kv.pool.total,
        max_request_tokens=rt.scheduler.capacity,
        pid=os.getpid(),
    )


SEND_TIMEOUT_MS = 1000  # a send blocked this long checks whether the server is still there


def zmq_sender(outbox: zmq.Socket, alive: Callable[[], bool]) -> Callable[[list[Any]], None]:
    """`send(msgs)` for the loop; a send that cannot get through while the server process
    is gone ends the engine (SystemExit) instead of blocking forever."""
    outbox.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)

    def send(msgs: list[Any]) -> None:
        while True:
            try:
                outbox.send_pyobj(msgs)
                return
            except zmq.Again:
                if not alive():
                    log.warning("the server process is gone; the engine exits")
                    raise SystemExit(0) from None

    return send


def zmq_receiver(inbox: zmq.Socket) -> Callable[[float], list[Any]]:
    """`receive(timeout_s)` for the loop: every message waiting on `inbox`, after waiting
    at most `timeout_s` for the first."""

    def receive(timeout_s: float) -> list[Any]:
        msgs: list[Any] = []
        if not inbox.poll(int(timeout_s * 1000)):
            return msgs
        while True:
            try:
                msgs.append(inbox.recv_pyobj(zmq.NOBLOCK))
            except zmq.Again:
                return msgs

    return receive


def run_engine_process(
    config: EngineConfig, in_addr: str, out_addr: str, ready_conn: Any, log_level: str
) -> None:
    """Process entry point: build the runtime from `config`, serve until shutdown.

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
        rt = build_runtime(config)
    except Exception as e:
        ready_conn.send(ReadyMsg(error=f"{type(e).__name__}: {e}"))
        ctx.destroy(linger=0)
        return
    ready_conn.send(ReadyMsg(info=model_info(rt)))
    ready_conn.close()
    parent = os.getppid()

    def alive() -> bool:
        return os.getppid() == parent  # reparented: the server process died

    loop = EngineLoop(rt.scheduler, rt.tokenizer, zmq_receiver(inbox), zmq_sender(outbox, alive),
                      config.queue_timeout, trace=rt.trace)  # fmt: skip
    sharded = False
    try:
        loop.run(alive=alive)  # no orphans
        sharded = send_stop()  # the tensor-parallel ranks > 0, if any, leave their loops
    finally:
        ctx.destroy(linger=1000)  # lets the last errors reach the server
    if sharded:
        exit_now(0)
