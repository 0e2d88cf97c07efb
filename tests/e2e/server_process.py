"""Start and stop a real server subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

FAULT_SITE = Path(__file__).resolve().parents[1] / "helpers" / "fault_site"


def fault_env(faults: bool = False, step_delay: float = 0.0) -> dict[str, str]:
    """Environment for a server whose forwards fail over POISON and/or take `step_delay` s
    longer (see helpers/fault_site)."""
    env = {"PYTHONPATH": str(FAULT_SITE)}
    if faults:
        env["RADIXLM_TEST_FAULTS"] = "1"
    if step_delay:
        env["RADIXLM_TEST_STEP_DELAY"] = str(step_delay)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    model: str


def start_server(
    cmd: list[str], port: int, timeout: float = 90.0, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start `cmd` (with `env` added to this environment) and wait until GET /health answers
    200; returns the process.

    Its output goes to a temporary file (read it with `read_log`), never to a
    pipe nobody drains, which would block a chatty server.
    """
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed with the process)
    full_env = None if env is None else {**os.environ, **env}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=full_env)
    proc.log_file = log  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited early:\n{read_log(proc)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the server did not become healthy:\n{read_log(proc)}")


def read_log(proc: subprocess.Popen) -> str:
    """Everything the server printed so far."""
    log = proc.log_file  # type: ignore[attr-defined]
    log.flush()
    log.seek(0)
    return log.read()


def idle_info(url: str, timeout: float = 10.0, headers: dict[str, str] | None = None) -> dict:
    """/get_server_info once nothing is running or waiting (or the last answer at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        info = httpx.get(f"{url}/get_server_info", headers=headers).json()
        idle = info["num_running_reqs"] == 0 and info["num_waiting_reqs"] == 0
        if idle or time.monotonic() > deadline:
            return info
        time.sleep(0.1)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_server(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    """Signal the server and wait for it; returns its exit status."""
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def serve(model: str, max_total_tokens: int, timeout: float = 90.0) -> Iterator[str]:
    """Start `radixlm.launch_server` on `model`, yield its URL, stop it (a fixture's body)."""
    port = free_port()
    # float32: the exact mode, so answers compare with in-process float32 references
    cmd = [sys.executable, "-m", "radixlm.launch_server", "--log-level", "warning",
           "--dtype", "float32", "--model", model, "--port", str(port),
           "--max-total-tokens", str(max_total_tokens)]  # fmt: skip
    proc = start_server(cmd, port, timeout=timeout)
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)
