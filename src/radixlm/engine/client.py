"""The HTTP process's side of the engine: send requests, receive chunks, asyncio-friendly.

`EngineClient` connects to the engine process's two sockets. One background
task reads the outputs socket and routes each message to the queue of its
request (or the future of its control call). Every coroutine here runs on the
server's event loop; nothing blocks it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import zmq
import zmq.asyncio

from radixlm.engine.messages import (
    AbortMsg,
    ChunkMsg,
    ControlMsg,
    ErrorMsg,
    GenerateMsg,
    ReplyMsg,
)

log = logging.getLogger(__name__)


class EngineRequestError(ValueError):
    """The request ended without a result: refused (`status` 400, for instance it can
    never fit in the KV pool) or failed inside the engine (`status` 500)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# Called once per finished request: (msg, finishing chunk, time sent, [(arrival, new tokens)]).
DoneHook = Callable[[GenerateMsg, ChunkMsg, float, list[tuple[float, int]]], None]


class EngineClient:
    """`on_done` sees each finished request; `report_cached` rewrites the `cached_tokens`
    callers receive (after `on_done` saw the exact count)."""

    def __init__(
        self,
        in_addr: str,
        out_addr: str,
        on_done: DoneHook | None = None,
        report_cached: Callable[[int], int] | None = None,
    ) -> None:
        self.ctx = zmq.asyncio.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.connect(in_addr)
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.connect(out_addr)
        self.queues: dict[str, asyncio.Queue[ChunkMsg | ErrorMsg]] = {}
        self.live: dict[str, GenerateMsg] = {}  # rid -> the request, while in flight
        self.calls: dict[int, asyncio.Future[Any]] = {}
        self._cids = itertools.count()
        self._task: asyncio.Task | None = None
        self.on_done = on_done
        self.report_cached = report_cached

    def start(self) -> None:
        """Start routing outputs; call from the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._route())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.ctx.destroy(linger=1000)  # lets a queued shutdown message reach the engine

    async def _route(self) -> None:
        while True:
            try:
                msgs = await self.pull.recv_pyobj()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("bad message from the engine")
                continue
            for m in msgs:
                if isinstance(m, ReplyMsg):
                    fut = self.calls.pop(m.cid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(m)
                else:
                    q = self.queues.get(m.rid)
                    if q is not None:
                        q.put_nowait(m)

    async def stream(self, msg: GenerateMsg) -> AsyncIterator[ChunkMsg]:
        """Submit `msg`; yield its chunks until the finishing one.

        Raises EngineRequestError when the engine refuses it or fails running it. If the consumer
        stops early (client gone, task cancelled), the request is aborted.
        `on_done` sees every request that finishes, with its chunks' arrival times.
        """
        if msg.rid in self.queues:
            raise EngineRequestError(f"rid: {msg.rid!r} is already in flight")
        q: asyncio.Queue[ChunkMsg | ErrorMsg] = asyncio.Queue()
        self.queues[msg.rid] = q
        self.live[msg.rid] = msg
        finished = False
        times: list[tuple[float, int]] = []
        try:
            await self.push.send_pyobj(msg)
            sent = time.perf_counter()
            while not finished:
                item = await q.get()
                if isinstance(item, ErrorMsg):
                    finished = True
                    raise EngineRequestError(item.message, item.status)
                times.append((time.perf_counter(), len(item.new_ids)))
                finished = item.finished
                if finished and self.on_done is not None:
                    self._report(msg, item, sent, times)
                if self.report_cached is not None and "cached_tokens" in item.meta_info:
                    item.meta_info["cached_tokens"] = self.report_cached(
                        item.meta_info["cached_tokens"]
                    )
                yield item
        finally:
            self.queues.pop(msg.rid, None)
            self.live.pop(msg.rid, None)
            if not finished:
                log.info("request %r aborted: its caller went away before it finished", msg.rid)
                self.abort_nowait(msg.rid)

    def _report(self, msg: GenerateMsg, last: ChunkMsg, sent: float, times: list) -> None:
        try:
            self.on_done(msg, last, sent, times)  # type: ignore[misc]
        except Exception:
            log.exception("the request-done hook failed")

    def fail_all(self, message: str, status: int = 503) -> int:
        """End every request and control call in flight with `message` (the engine is gone);
        returns how many requests there were."""
        for rid, q in self.queues.items():
            q.put_nowait(ErrorMsg(rid, message, status))
        for cid, fut in list(self.calls.items()):
            if not fut.done():
                fut.set_result(ReplyMsg(cid, error=message))
        return len(self.queues)

    def abort_nowait(self, rid: str | None) -> None:
        """Ask the engine to abort `rid` (None: all); safe inside cancellation and `finally`."""
        self.push.send_pyobj(AbortMsg(rid), zmq.NOBLOCK)

    def abort_as(self, rid: str | None, tenant: str | None) -> int:
        """Abort `rid` (and its n samples; None: all) as `tenant` may: an admin (None) any
        request, a tenant only its own. Returns how many live requests were targeted."""
        if tenant is None:
            self.abort_nowait(rid)
            return sum(1 for m in self.live.values() if rid in (None, m.rid, m.parent_rid))
        mine = [m.rid for m in self.live.values()
                if m.tenant == tenant and rid in (None, m.rid, m.parent_rid)]  # fmt: skip
        for r in mine:
            self.abort_nowait(r)
        return len(mine)

    async def call(self, kind: str, timeout: float = 30.0) -> Any:
        """Run a control call in the engine ("get_stats", "flush_cache", ...); return its result.

        Raises RuntimeError with the engine's message if it failed, TimeoutError if no answer.
        """
        cid = next(self._cids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.calls[cid] = fut
        try:
            await self.push.send_pyobj(ControlMsg(cid, kind))
            reply: ReplyMsg = await asyncio.wait_for(fut, timeout)
        finally:
            self.calls.pop(cid, None)
        if reply.error is not None:
            raise RuntimeError(reply.error)
        return reply.result

    def shutdown_nowait(self) -> None:
        """Tell the engine to abort everything and exit."""
        self.push.send_pyobj(ControlMsg(-1, "shutdown"), zmq.NOBLOCK)
