"""The engine process's supervisor, in the HTTP process: start it, watch it, replace it.

`start()` spawns an engine and waits until it has loaded the model. `watch(state)`
runs on the server's event loop; within `POLL_S` of the engine's death it fails
every request in flight with a 503 (an error event then `[DONE]` on streams),
then starts a new engine (up to `max_restarts` times) or asks the server to stop
with a non-zero status, so that an orchestrator restarts it. Each step is logged.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radixlm.config import ServerConfig
from radixlm.engine.messages import ModelInfo
from radixlm.threads import engine_env

if TYPE_CHECKING:
    from radixlm.server.state import ServerState

log = logging.getLogger("radixlm.server")

POLL_S = 0.2  # how often the engine's liveness is checked


class EngineStartError(RuntimeError):
    """The engine process could not load the model (the message says why)."""


class EngineSupervisor:
    """One engine process at a time; `proc`, `in_addr` and `out_addr` are the current one's."""

    def __init__(self, cfg: ServerConfig, ipc_dir: Path) -> None:
        self.cfg = cfg
        self.ipc_dir = ipc_dir
        self.max_restarts = cfg.max_engine_restarts if cfg.engine_restart else 0
        self.restarts = 0
        self.proc: mp.process.BaseProcess | None = None
        self.in_addr = self.out_addr = ""
        self.exit_code = 0  # set when the supervisor gave up

    def start(self) -> ModelInfo:
        """Spawn an engine and wait until it has loaded the model; return its model info.

        Raises EngineStartError with the engine's message when loading fails. Blocks:
        on the event loop, call it in a thread.
        """
        from radixlm.engine.process import run_engine_process

        n = self.restarts
        self.in_addr = f"ipc://{self.ipc_dir}/requests-{n}"
        self.out_addr = f"ipc://{self.ipc_dir}/outputs-{n}"
        ctx = mp.get_context("spawn")
        recv_conn, send_conn = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(
            target=run_engine_process,
            args=(self.cfg.engine, self.in_addr, self.out_addr, send_conn, self.cfg.log_level),
            name="radixlm-engine",
            daemon=True,
        )
        with engine_env():  # the engine's own OpenMP policy, see radixlm.threads
            self.proc.start()
        send_conn.close()
        return _wait_ready(self.proc, recv_conn)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    async def watch(self, state: ServerState, stop_server: Callable[[], None]) -> None:
        """Replace the engine whenever it dies; `stop_server()` when no restart is left."""
        while True:
            await asyncio.sleep(POLL_S)
            if self.alive():
                continue
            code = self.proc.exitcode if self.proc is not None else None
            state.ready = False
            failed = await state.fail_engine(f"the engine process died (exit code {code})")
            log.error("the engine process died (exit code %s); %d requests in flight failed",
                      code, failed)  # fmt: skip
            if self.restarts >= self.max_restarts:
                why = f"no engine restart left ({self.max_restarts} allowed)"
                return self._give_up(why, stop_server)
            self.restarts += 1
            log.warning("restarting the engine (%d of %d)", self.restarts, self.max_restarts)
            try:
                state.info = await asyncio.to_thread(self.start)
            except EngineStartError as e:
                return self._give_up(f"the engine did not restart ({e})", stop_server)
            state.connect(self.in_addr, self.out_addr)
            log.warning("the engine is back (pid %d)", state.info.pid)

    def _give_up(self, why: str, stop_server: Callable[[], None]) -> None:
        log.error("%s; the server stops", why)
        self.exit_code = 1
        stop_server()

    def stop(self, timeout: float = 3.0) -> None:
        """Wait for the engine to exit (it was told to); terminate, then kill, if it lingers."""
        proc = self.proc
        if proc is None:
            return
        proc.join(timeout)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _wait_ready(proc: mp.process.BaseProcess, conn: Any) -> ModelInfo:
    while not conn.poll(0.2):
        if not proc.is_alive():
            raise EngineStartError(f"the engine process exited with code {proc.exitcode}")
    ready = conn.recv()
    if ready.error is not None or ready.info is None:
        raise EngineStartError(ready.error or "the engine sent no model info")
    return ready.info
