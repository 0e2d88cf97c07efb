"""Child processes of a launch: started pinned, in their own session, dying with us.

Every child (worker or router) starts in a new session, so a terminal's Ctrl-C reaches
only the launcher, which then stops them in order; and with the parent-death signal
set (Linux `prctl(PR_SET_PDEATHSIG)`), a child gets SIGTERM if the launcher dies
without cleaning up (kill -9), so nothing outlives it. A worker's engine process
already exits when its server goes.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import IO

import httpx

log = logging.getLogger("radixlm.scaleout")

_PR_SET_PDEATHSIG = 1


def _child_setup(cpus: Sequence[int]) -> None:
    """Runs in the child before exec: die with the parent; pin to `cpus` (if any)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: our cleanup is all
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if cpus:
        os.sched_setaffinity(0, cpus)


def spawn(argv: list[str], env: dict[str, str], cpus: Sequence[int], log_file: IO[str] | None,
          ) -> subprocess.Popen:  # fmt: skip
    """Start `argv` with `env` added, pinned to `cpus`, output to `log_file` (None: ours)."""
    cpus = tuple(cpus)
    return subprocess.Popen(argv, env={**os.environ, **env}, stdout=log_file,
                            stderr=subprocess.STDOUT if log_file else None,
                            start_new_session=True,
                            preexec_fn=lambda: _child_setup(cpus))  # fmt: skip


def worker_command(worker_argv: Sequence[str], port: int, kv_events_endpoint: str | None,
                   block_size: int) -> list[str]:  # fmt: skip
    """`python -m radixlm.launch_server` with the shared flags, then this worker's own.

    argparse keeps the last value of a repeated flag, so the appended --host/--port
    (and --kv-events-config) win over any the shared flags carry.
    """
    argv = [sys.executable, "-m", "radixlm.launch_server", *worker_argv,
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    if kv_events_endpoint:
        argv += ["--kv-events-config", ('{"enable_kv_cache_events": true, "endpoint": "'
                                        f'{kv_events_endpoint}", "block_size": {block_size}}}')]
    return argv


def thread_env(cpus: Sequence[int]) -> dict[str, str]:
    """OpenMP/torch threads = the worker's share of CPUs (nothing set without a share)."""
    return {"OMP_NUM_THREADS": str(len(cpus))} if cpus else {}


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float, path: str = "/health") -> None:
    """Return once GET `url + path` answers 200; raise RuntimeError if `proc` exits first
    or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with status {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url}: not healthy after {timeout:.0f} s")


def stop_all(procs: Sequence[subprocess.Popen], grace: float = 20.0) -> None:
    """SIGTERM every live process, wait up to `grace` s in all, then SIGKILL the rest."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop in %.0f s: killing it", p.pid, grace)
            p.kill()
            p.wait()
