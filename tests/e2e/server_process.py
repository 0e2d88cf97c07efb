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

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    model: str


def start_server(cmd: list[str], port: int, timeout: float = 90.0) -> subprocess.Popen:
    """Start `cmd` and wait until GET /health answers 200; returns the process.

    Its output goes to a temporary file (read it with `read_log`), never to a
    pipe nobody drains, which would block a chatty server.
    """
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
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
    cmd = [sys.executable, "-m", "radixlm.launch_server", "--log-level", "warning",
           "--model", model, "--port", str(port),
           "--max-total-tokens", str(max_total_tokens)]  # fmt: skip
    proc = start_server(cmd, port, timeout=timeout)
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)
