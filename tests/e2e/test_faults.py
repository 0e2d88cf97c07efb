"""Faults a hostile or broken client can cause, on live servers. Each scenario ends with
no hang, bounded memory, the errors users see, and an intact, empty KV pool.

(Engine and server kills are in test_engine_supervision.py.)
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time

import httpx
import pytest
from e2e.server_process import (
    fault_env,
    free_port,
    idle_info,
    read_log,
    start_server,
    stop_server,
)

LONG = {"max_new_tokens": 400, "ignore_eos": True, "temperature": 0}


def _launch(model: str, *flags: str, step_delay: float = 0.005):
    port = free_port()
    cmd = [sys.executable, "-m", "radixlm.launch_server", "--log-level", "info",
           "--dtype", "float32", "--model", model, "--port", str(port),
           "--max-total-tokens", "4096", *flags]  # fmt: skip
    proc = start_server(cmd, port, env=fault_env(step_delay=step_delay))
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def slow(tiny_model_factory):
    proc, url = _launch(str(tiny_model_factory("llama")))
    yield proc, url
    stop_server(proc)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _clean(url: str) -> None:
    time.sleep(0.5)  # the engine checks KV integrity once idle
    info = idle_info(url, timeout=30)
    assert info["num_running_reqs"] == 0 and info["token_usage"] == 0
    assert info["integrity_error"] is None


def _raw_stream(url: str, max_new_tokens: int) -> socket.socket:
    """Open a streamed /generate on a raw socket and never read from it."""
    host, port = url.removeprefix("http://").split(":")
    body = (b'{"text": "never read", "stream": true, "sampling_params": '
            b'{"max_new_tokens": %d, "ignore_eos": true}}' % max_new_tokens)  # fmt: skip
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"POST /generate HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (host.encode(), port.encode(), len(body), body))
    return s


def test_clients_that_never_read_their_streams_cost_bounded_memory(slow):
    proc, url = slow
    before = _rss_kib(proc.pid)
    socks = [_raw_stream(url, 400) for _ in range(4)]
    deadline = time.monotonic() + 60
    # each streamed event repeats the whole text so far: unread, they pile up server-side
    while httpx.get(f"{url}/get_server_info").json()["num_running_reqs"] and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    grown_mib = (_rss_kib(proc.pid) - before) / 1024
    assert grown_mib < 64, f"the server grew {grown_mib:.0f} MiB for 4 unread streams"
    for s in socks:
        s.close()
    _clean(url)
    assert httpx.post(f"{url}/generate", json={"text": "ok"}).status_code == 200


def test_a_disconnect_storm_leaks_nothing(slow):
    proc, url = slow

    def drop(i: int) -> None:
        body = {"text": f"storm {i}", "sampling_params": LONG, "stream": i % 2 == 0}
        try:
            with httpx.stream("POST", f"{url}/generate", json=body, timeout=0.3) as res:
                for _ in res.iter_lines():
                    pass
        except httpx.HTTPError:
            pass  # the point: this client goes away mid-request

    threads = [threading.Thread(target=drop, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    _clean(url)
    assert "aborted: its caller went away" in read_log(proc)
    after = {"text": "after", "sampling_params": {"max_new_tokens": 2}}
    res = httpx.post(f"{url}/generate", json=after)
    assert res.status_code == 200 and res.json()["meta_info"]["completion_tokens"] == 2


def test_sigterm_drains_for_at_most_the_grace_period(tiny_model_factory):
    proc, url = _launch(str(tiny_model_factory("llama")), "--drain-timeout", "1",
                        step_delay=0.05)  # fmt: skip  # 400 tokens would take 20 s
    out: dict = {}

    def slow_request() -> None:
        try:
            body = {"text": "slow", "sampling_params": LONG}
            out["res"] = httpx.post(f"{url}/generate", json=body, timeout=60)
        except httpx.HTTPError as e:
            out["res"] = e

    t = threading.Thread(target=slow_request)
    t.start()
    deadline = time.monotonic() + 20
    while httpx.get(f"{url}/get_server_info").json()["num_running_reqs"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    sent = time.monotonic()
    code = stop_server(proc, signal.SIGTERM)
    took = time.monotonic() - sent
    t.join(timeout=10)
    assert not t.is_alive(), "the request still hangs after the server stopped"
    assert took < 10, f"the drain took {took:.1f} s with --drain-timeout 1"
    assert code in (0, 128 + signal.SIGTERM), read_log(proc)[-2000:]
    res = out["res"]
    assert isinstance(res, httpx.HTTPError) or res.status_code >= 500 or (
        res.json()["meta_info"]["completion_tokens"] < 400
    )


@pytest.mark.slow
def test_health_answers_while_a_huge_prompt_is_tokenized(smollm2_path):
    proc, url = _launch(str(smollm2_path), "--max-total-tokens", "16384", step_delay=0)
    try:
        results: dict = {}
        # 1M characters: under the size refused untokenized, far over the context once tokenized
        big = "lorem ipsum dolor sit amet " * 37_000

        def send(name: str, text: str) -> None:
            results[name] = httpx.post(f"{url}/generate", json={"text": text}, timeout=120)

        worst = 0.0
        for name, text in (("huge", "x" * (10 * 2**20)), ("big", big)):
            t = threading.Thread(target=send, args=(name, text))
            t.start()
            while t.is_alive():
                start = time.monotonic()
                assert httpx.get(f"{url}/health", timeout=10).status_code == 200
                worst = max(worst, time.monotonic() - start)
                time.sleep(0.01)
            assert results[name].status_code == 400
            assert results[name].json()["error"]["code"] == "context_length_exceeded"
        print(f"worst /health latency while tokenizing: {worst * 1000:.0f} ms")
        assert worst < 0.5  # on the event loop it was seconds
    finally:
        stop_server(proc)
