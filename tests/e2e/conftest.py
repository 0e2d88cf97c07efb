"""A real server subprocess on a free loopback port, serving a tiny model."""

from __future__ import annotations

import signal
import sys
import time

import httpx
import pytest
from e2e.server_process import (
    Server,
    fault_env,
    free_port,
    pid_alive,
    read_log,
    start_server,
    stop_server,
)


def run_server(model: str, argv: list[str], sig: int, env: dict[str, str] | None = None):
    """Start a server with `argv` (+ model and port) and `env`, yield it, stop it with `sig`.

    On the way out: the exit is clean, the banner said where it listened and the
    KV capacity, and the engine process is gone.
    """
    port = free_port()
    cmd = [sys.executable, "-m", *argv, "--model", model, "--port", str(port),
           "--max-total-tokens", "4096"]  # fmt: skip
    proc = start_server(cmd, port, env=env)
    url = f"http://127.0.0.1:{port}"
    engine_pid = httpx.get(f"{url}/get_server_info").json()["engine_pid"]
    yield Server(url, proc, model)
    assert stop_server(proc, sig) in (0, 128 + sig)  # a clean exit, or the signal's status
    out = read_log(proc)
    assert f"at http://127.0.0.1:{port}" in out and "KV pool 4096 tokens" in out
    deadline = time.monotonic() + 10
    while pid_alive(engine_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(engine_pid), "the engine process outlived the server"


# float32 (the exact mode) throughout, so answers compare with in-process references.
LIMITED = ["radixlm.launch_server", "--log-level", "warning", "--dtype", "float32", "--max-n", "4",
           "--queue-timeout", "1", "--max-running-requests", "2"]  # fmt: skip


@pytest.fixture(scope="session")
def server(tiny_model_factory):
    """`python -m radixlm.launch_server` on the tiny llama model, stopped with SIGTERM.

    At most 2 running requests and a 1 s queue timeout, so queueing can be tested.
    """
    yield from run_server(str(tiny_model_factory("llama")), LIMITED, signal.SIGTERM)


@pytest.fixture(scope="module")
def slow_server(tiny_model_factory):
    """`server`, but every step takes 5 ms longer, so requests outlast short deadlines."""
    env = fault_env(step_delay=0.005)
    yield from run_server(str(tiny_model_factory("llama")), LIMITED, signal.SIGTERM, env)


@pytest.fixture(scope="session")
def cli_server(tiny_model_factory):
    """`radixlm serve` on the tiny llama model, stopped with SIGINT (Ctrl-C)."""
    argv = ["radixlm.cli", "--log-level", "warning", "serve", "--dtype", "float32"]
    yield from run_server(str(tiny_model_factory("llama")), argv, signal.SIGINT)
