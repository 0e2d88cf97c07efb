"""Run N workers and a router (`radixlm serve --dp N`), or a router alone (`radixlm router`).

Start-up: every worker starts at once (each pinned to its share of the CPUs), the
router starts once all answer /health, then one line says where the router listens.
While serving, a worker that dies is started again on its port (the router's health
checks take it out and put it back). Ctrl-C or SIGTERM stops the router, then the
workers; a child still running after the grace period is killed. Exit status: 0 after
a requested stop, 1 when start-up fails or the router dies.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

import httpx

from radixlm.scaleout.config import KV_BLOCK_SIZE, DPConfig, RouterConfig
from radixlm.scaleout.router import router_command
from radixlm.scaleout.workers import (
    spawn,
    stop_all,
    thread_env,
    wait_healthy,
    worker_command,
)

log = logging.getLogger("radixlm.scaleout")

WORKER_START_TIMEOUT_S = 300.0
ROUTER_START_TIMEOUT_S = 60.0
MAX_WORKER_RESTARTS = 5  # per worker, then it stays down


@dataclass
class _Stop:
    """Set by SIGINT/SIGTERM: the main loop then stops everything."""

    signum: int | None = None
    previous: dict[int, object] = field(default_factory=dict)

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


class Worker:
    """One worker process of a DP launch: its command, CPUs and restarts."""

    def __init__(self, cfg: DPConfig, i: int) -> None:
        self.i, self.url = i, f"http://127.0.0.1:{cfg.worker_port(i)}"
        self.cpus = cfg.cpu_share(i)
        events = cfg.kv_events_endpoint(i) if cfg.with_kv_events else None
        self.kv_events_endpoint = events
        self.argv = worker_command(cfg.worker_argv, cfg.worker_port(i), events, KV_BLOCK_SIZE)
        self.env = thread_env(self.cpus)
        self.restarts = 0
        self.proc = self.start()

    def start(self) -> subprocess.Popen:
        self.proc = spawn(self.argv, self.env, self.cpus, None)
        return self.proc


def with_worker_identity(cfg: RouterConfig) -> RouterConfig:
    """`cfg` with `tokenizer` and `model` read from its first worker where unset (only
    vllm-router's kv_aware needs them: it tokenizes prompts to match KV-event blocks)."""
    if cfg.router != "vllm-router" or (cfg.tokenizer and cfg.model):
        return cfg
    url = cfg.worker_urls[0]
    try:
        info = httpx.get(f"{url}/get_model_info", timeout=10).json()
        models = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
    except (httpx.HTTPError, ValueError, KeyError) as e:
        raise RuntimeError(f"{url}: cannot read the model identity: {e}") from None
    return dataclasses.replace(cfg, tokenizer=cfg.tokenizer or info.get("tokenizer_path"),
                               model=cfg.model or (models[0]["id"] if models else None))


def _serve_until_stopped(stop: _Stop, router: subprocess.Popen, workers: list[Worker],
                         restart: bool) -> int:  # fmt: skip
    """Watch the children until a signal (0) or the router's death (1)."""
    while stop.signum is None:
        if router.poll() is not None:
            print(f"radixlm: error: the router exited with status {router.returncode}",
                  file=sys.stderr, flush=True)  # fmt: skip
            return 1
        for w in workers:
            if w.proc.poll() is not None and restart and w.restarts < MAX_WORKER_RESTARTS:
                w.restarts += 1
                status = w.proc.returncode
                w.start()
                print(f"radixlm: worker {w.i} ({w.url}) exited with status {status}: "
                      f"started again as pid {w.proc.pid}", file=sys.stderr, flush=True)
        time.sleep(0.2)
    return 0


def run_dp(cfg: DPConfig) -> int:
    """Serve `cfg` until Ctrl-C/SIGTERM; returns the exit status (see the module doc)."""
    stop = _Stop()
    stop.install()
    workers: list[Worker] = []
    router: subprocess.Popen | None = None
    try:
        workers = [Worker(cfg, i) for i in range(cfg.dp)]
        for w in workers:
            wait_healthy(w.url, w.proc, WORKER_START_TIMEOUT_S)
        sources = tuple((w.url, w.kv_events_endpoint) for w in workers if w.kv_events_endpoint)
        rcfg = RouterConfig(
            worker_urls=tuple(w.url for w in workers), router=cfg.router, policy=cfg.policy,
            host=cfg.host, port=cfg.port, log_level=cfg.log_level,
            kv_event_sources=sources if cfg.router == "vllm-router" else (),
            extra_args=cfg.router_args,
        )  # fmt: skip
        argv, env = router_command(with_worker_identity(rcfg))
        router = spawn(argv, env, (), None)
        wait_healthy(f"http://{_connect_host(cfg.host)}:{cfg.port}", router,
                     ROUTER_START_TIMEOUT_S, path="/health")  # fmt: skip
        pids = ", ".join(f"{w.url} pid {w.proc.pid} cpus {list(w.cpus) or 'all'}"
                         for w in workers)  # fmt: skip
        print(f"radixlm: {cfg.dp} workers ({pids}) behind {cfg.router} --policy {cfg.policy} "
              f"(pid {router.pid}) at http://{cfg.host}:{cfg.port}", file=sys.stderr, flush=True)
        return _serve_until_stopped(stop, router, workers, cfg.restart_workers)
    except RuntimeError as e:
        print(f"radixlm: error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        stop_all([p for p in (router,) if p is not None])
        stop_all([w.proc for w in workers])
        stop.restore()


def run_router(cfg: RouterConfig) -> int:
    """Run `cfg`'s router in front of existing workers until Ctrl-C/SIGTERM."""
    stop = _Stop()
    stop.install()
    try:
        argv, env = router_command(with_worker_identity(cfg))
    except RuntimeError as e:
        print(f"radixlm: error: {e}", file=sys.stderr, flush=True)
        stop.restore()
        return 1
    router = spawn(argv, env, (), None)
    try:
        wait_healthy(f"http://{_connect_host(cfg.host)}:{cfg.port}", router,
                     ROUTER_START_TIMEOUT_S)  # fmt: skip
        print(f"radixlm: {cfg.router} --policy {cfg.policy} in front of "
              f"{' '.join(cfg.worker_urls)} at http://{cfg.host}:{cfg.port}",
              file=sys.stderr, flush=True)  # fmt: skip
        return _serve_until_stopped(stop, router, [], restart=False)
    except RuntimeError as e:
        print(f"radixlm: error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        stop_all([router])
        stop.restore()


def _connect_host(host: str) -> str:
    """Where to reach a server bound to `host` from this machine."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
