"""A forward that raises inside the live engine process: its requests get a 500 (or an
error event and [DONE] in a stream) at once, everyone else is served, nothing leaks.

The server runs with `helpers/fault_site` on PYTHONPATH: its sitecustomize makes every
forward over `helpers.faults.POISON` raise (see there).
"""

from __future__ import annotations

import json
import sys
import threading
import time

import httpx
import pytest
from e2e.server_process import fault_env, free_port, idle_info, start_server, stop_server
from helpers.faults import POISON

CLEAN = [11, 12, 13, 14]


@pytest.fixture(scope="module")
def faulty(tiny_model_factory):
    port = free_port()
    cmd = [sys.executable, "-m", "radixlm.launch_server", "--log-level", "warning",
           "--dtype", "float32",
           "--model", str(tiny_model_factory("llama")), "--port", str(port),
           "--max-total-tokens", "4096"]  # fmt: skip
    proc = start_server(cmd, port, env=fault_env(faults=True))
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)


def events(res: httpx.Response) -> list:
    """The SSE payloads of a streamed response (JSON objects, and the final "[DONE]")."""
    out = []
    for line in res.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def assert_internal_error(body: dict) -> None:
    err = body["error"]
    assert err["type"] == "internal_error" and "InjectedFault" in err["message"], body


def test_failed_requests_end_at_once_while_others_are_served(faulty):
    long: dict = {}

    def run_long() -> None:
        body = {"input_ids": CLEAN, "sampling_params": {"max_new_tokens": 300,
                "ignore_eos": True, "temperature": 0}}  # fmt: skip
        long["res"] = httpx.post(f"{faulty}/generate", json=body, timeout=120)

    t = threading.Thread(target=run_long)
    t.start()
    deadline = time.monotonic() + 20
    while httpx.get(f"{faulty}/get_server_info").json()["num_running_reqs"] < 1:
        assert time.monotonic() < deadline, "the long request did not start"
        time.sleep(0.02)
    poisoned = [20, 21, *POISON, 22]

    start = time.monotonic()
    res = httpx.post(f"{faulty}/v1/completions", json={"prompt": poisoned, "max_tokens": 4})
    assert time.monotonic() - start < 1.0
    assert res.status_code == 500
    assert_internal_error(res.json())

    res = httpx.post(f"{faulty}/generate", json={"input_ids": poisoned})
    assert res.status_code == 500
    assert_internal_error(res.json())

    body = {"prompt": poisoned, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{faulty}/v1/completions", json=body) as r:
        got = events(r)
    assert_internal_error(got[-2])
    assert got[-1] == "[DONE]"

    body = {"input_ids": poisoned, "stream": True}
    with httpx.stream("POST", f"{faulty}/generate", json=body) as r:
        got = events(r)
    assert_internal_error(got[-2])
    assert got[-1] == "[DONE]"

    t.join(timeout=120)
    out = long["res"].json()
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 300}

    again = httpx.post(f"{faulty}/v1/completions", json={"prompt": CLEAN, "max_tokens": 3})
    assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 3
    time.sleep(0.5)  # the engine checks KV integrity once idle
    info = idle_info(faulty)
    assert info["integrity_error"] is None and info["token_usage"] == 0
