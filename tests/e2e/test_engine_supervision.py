"""kill -9 of either process of a live server: nobody hangs, the engine comes back.

The server runs the tiny model with every step 10 ms longer (so requests are in flight
when the engine dies) and one engine restart allowed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time

import httpx
from e2e.server_process import (
    fault_env,
    free_port,
    idle_info,
    pid_alive,
    read_log,
    start_server,
)

LONG = {"max_new_tokens": 400, "ignore_eos": True, "temperature": 0}


def launch(model: str, *flags: str):
    port = free_port()
    cmd = [sys.executable, "-m", "radixlm.launch_server", "--model", model, "--port", str(port),
           "--max-total-tokens", "4096", *flags]  # fmt: skip
    proc = start_server(cmd, port, env=fault_env(step_delay=0.01))
    return proc, f"http://127.0.0.1:{port}"


def last_event(url: str, path: str, body: dict) -> tuple[object, object]:
    """The last two SSE payloads of a streamed request."""
    with httpx.stream("POST", f"{url}{path}", json=body, timeout=30) as r:
        data = [ln.removeprefix("data: ") for ln in r.iter_lines() if ln.startswith("data: ")]
    return json.loads(data[-2]), data[-1]


def in_flight(url: str) -> dict[str, threading.Thread]:
    """Six requests (native, OpenAI, chat; plain and streamed), each in its thread;
    what each ended with lands in the returned dict under "results"."""
    results: dict[str, object] = {}
    # ignore_eos everywhere: a request the random model ends early would not be in flight.
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 400, "ignore_eos": True}
    native = {"text": "a", "sampling_params": LONG}
    completion = {"prompt": "b", "max_tokens": 400, "ignore_eos": True}
    posts = {"native": ("/generate", native), "completion": ("/v1/completions", completion),
             "chat": ("/v1/chat/completions", chat)}  # fmt: skip
    calls = {name: lambda p=path, b=body: httpx.post(f"{url}{p}", json=b, timeout=30)
             for name, (path, body) in posts.items()}  # fmt: skip
    for name, (path, body) in posts.items():
        calls[f"{name}-stream"] = lambda p=path, b=body: last_event(url, p, {**b, "stream": True})

    def run(name: str) -> None:
        started = time.monotonic()
        results[name] = (calls[name](), started)

    threads = {n: threading.Thread(target=run, args=(n,)) for n in calls}
    for t in threads.values():
        t.start()
    deadline = time.monotonic() + 20
    while httpx.get(f"{url}/get_server_info").json()["num_running_reqs"] < len(calls):
        assert time.monotonic() < deadline, "the requests did not all start"
        time.sleep(0.05)
    return {"threads": threads, "results": results}


def assert_failed_with_503(name: str, got: object) -> None:
    if isinstance(got, httpx.Response):
        assert got.status_code == 503, (name, got.text)
        err = got.json()["error"]
    else:
        event, done = got
        assert done == "[DONE]", name
        err = event["error"]
    assert err["type"] == "service_unavailable" and "engine process died" in err["message"]


def test_a_killed_engine_fails_its_requests_and_is_replaced(tiny_model_factory):
    proc, url = launch(str(tiny_model_factory("llama")), "--max-engine-restarts", "1")
    try:
        flight = in_flight(url)
        engine = httpx.get(f"{url}/get_server_info").json()["engine_pid"]
        killed = time.monotonic()
        os.kill(engine, signal.SIGKILL)
        for name, t in flight["threads"].items():
            t.join(timeout=10)
            assert not t.is_alive(), f"{name} still hangs"
            got, _ = flight["results"][name]
            assert_failed_with_503(name, got)
        assert time.monotonic() - killed < 5
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/health").status_code != 200:
            assert time.monotonic() < deadline, read_log(proc)[-3000:]
            time.sleep(0.2)
        res = httpx.post(f"{url}/v1/completions", json={"prompt": "again", "max_tokens": 3,
                                                           "ignore_eos": True})
        assert res.status_code == 200 and res.json()["usage"]["completion_tokens"] == 3
        info = idle_info(url)
        assert info["engine_pid"] != engine and info["token_usage"] == 0
        log = read_log(proc)
        assert "the engine process died (exit code -9)" in log and "the engine is back" in log

        # No restart left: the next death stops the server with status 1.
        os.kill(info["engine_pid"], signal.SIGKILL)
        assert proc.wait(timeout=20) == 1
        assert "no engine restart left" in read_log(proc)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_engine_exits_when_the_server_process_is_killed(tiny_model_factory):
    proc, url = launch(str(tiny_model_factory("llama")))
    body = {"text": "x", "sampling_params": LONG}

    def stream_until_cut() -> None:
        with contextlib.suppress(httpx.HTTPError, IndexError):
            last_event(url, "/generate", {**body, "stream": True})

    threading.Thread(target=stream_until_cut, daemon=True).start()
    time.sleep(0.5)  # the engine is decoding and sending
    engine = httpx.get(f"{url}/get_server_info").json()["engine_pid"]
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while pid_alive(engine):
        assert time.monotonic() < deadline, "the engine outlived the server by 10 s"
        time.sleep(0.1)
