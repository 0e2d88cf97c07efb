"""Request ids and per-call limits on a live server: no request can take over or cancel
another's, and no single call can flood the engine.

The server (tiny model, steps 5 ms longer so requests stay in flight) runs with small
limits: 2 running and 2 queued requests, 8 prompts per call, top_logprobs_num <= 5, and
chat answers of 7 tokens unless asked otherwise.
"""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest
from e2e.conftest import run_server
from e2e.server_process import fault_env, idle_info

LONG = {"max_new_tokens": 300, "ignore_eos": True, "temperature": 0}


@pytest.fixture(scope="module")
def url(tiny_model_factory):
    argv = ["radixlm.launch_server", "--log-level", "warning", "--dtype", "float32",
            "--max-running-requests", "2",
            "--max-queued-requests", "2", "--max-prompts-per-request", "8",
            "--max-top-logprobs", "5", "--default-max-tokens", "7"]  # fmt: skip
    env = fault_env(step_delay=0.005)
    for server in run_server(str(tiny_model_factory("llama")), argv, signal.SIGTERM, env):
        yield server.url


def background(url: str, body: dict) -> tuple[threading.Thread, dict]:
    """POST /generate `body` in a thread; the response lands in the returned dict."""
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(res=httpx.post(f"{url}/generate", json=body,
                                                                  timeout=60)))  # fmt: skip
    t.start()
    return t, out


def wait_running(url: str, n: int) -> None:
    deadline = time.monotonic() + 20
    while httpx.get(f"{url}/get_server_info").json()["num_running_reqs"] < n:
        assert time.monotonic() < deadline, f"{n} requests did not start"
        time.sleep(0.02)


def test_a_live_rid_cannot_be_reused(url):
    t, first = background(url, {"text": "one", "sampling_params": LONG, "rid": "dup"})
    wait_running(url, 1)
    res = httpx.post(f"{url}/generate", json={"text": "two", "rid": "dup"})
    assert res.status_code == 400 and res.json()["error"]["param"] == "rid"
    same_call = httpx.post(f"{url}/generate", json={"text": ["a", "b"], "rid": ["r", "r"]})
    assert same_call.status_code == 400 and same_call.json()["error"]["param"] == "rid"
    t.join(timeout=60)
    meta = first["res"].json()["meta_info"]
    assert meta["id"] == "dup" and meta["completion_tokens"] == 300  # untouched
    assert idle_info(url)["token_usage"] == 0


def test_an_abort_reaches_its_rid_and_its_samples_only(url):
    t1, other = background(url, {"text": "x", "sampling_params": LONG, "rid": "x-1"})
    t2, mine = background(url, {"text": "y", "sampling_params": LONG, "rid": "x"})
    wait_running(url, 2)
    httpx.post(f"{url}/abort_request", json={"rid": "x"})
    t1.join(timeout=60)
    t2.join(timeout=60)
    assert other["res"].json()["meta_info"]["finish_reason"]["type"] == "length"
    assert mine["res"].json()["meta_info"]["finish_reason"]["type"] == "abort"

    t3, samples = background(url, {"text": "z", "sampling_params": {**LONG, "n": 2}, "rid": "z"})
    wait_running(url, 2)
    httpx.post(f"{url}/abort_request", json={"rid": "z"})
    t3.join(timeout=60)
    reasons = [r["meta_info"]["finish_reason"]["type"] for r in samples["res"].json()]
    assert reasons == ["abort", "abort"]


def test_per_call_limits_are_400s_naming_the_field(url):
    res = httpx.post(f"{url}/generate", json={"text": ["p"] * 9})
    assert res.status_code == 400 and res.json()["error"]["param"] == "text"
    assert "--max-prompts-per-request" in res.json()["error"]["message"]
    res = httpx.post(f"{url}/generate", json={"text": ["p"] * 3,
                                              "sampling_params": {"n": 3}})  # fmt: skip
    assert res.status_code == 400  # 3 prompts x n = 3 is 9 requests
    res = httpx.post(f"{url}/v1/completions", json={"prompt": ["p"] * 9, "max_tokens": 1})
    assert res.status_code == 400 and res.json()["error"]["param"] == "prompt"
    body = {"text": "p", "return_logprob": True, "top_logprobs_num": 6}
    res = httpx.post(f"{url}/generate", json=body)
    assert res.status_code == 400 and res.json()["error"]["param"] == "top_logprobs_num"
    assert httpx.post(f"{url}/generate", json={**body, "top_logprobs_num": 5}).status_code == 200


def test_a_full_queue_answers_429_with_retry_after(url):
    threads = [background(url, {"text": f"q{i}", "sampling_params": LONG})[0] for i in range(4)]
    wait_running(url, 2)
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/get_server_info").json()["num_waiting_reqs"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    res = httpx.post(f"{url}/v1/completions", json={"prompt": "one more", "max_tokens": 1})
    assert res.status_code == 429 and res.headers["retry-after"] == "1"
    assert res.json()["error"]["type"] == "rate_limit_error"
    httpx.post(f"{url}/abort_request", json={"abort_all": True})
    for t in threads:
        t.join(timeout=60)
    assert idle_info(url)["token_usage"] == 0


def test_a_chat_without_max_tokens_gets_the_default(url):
    body = {"messages": [{"role": "user", "content": "hi"}], "ignore_eos": True}
    res = httpx.post(f"{url}/v1/chat/completions", json=body)
    assert res.status_code == 200 and res.json()["usage"]["completion_tokens"] == 7


def test_small_input_traps_are_400s_naming_the_field(url):
    cases = [
        ({"text": "x", "rid": "a\nINFO forged log line"}, "rid"),
        ({"text": "x", "rid": "r" * 257}, "rid"),
        ({"text": "x", "sampling_params": {"logit_bias": {"5": 1e39}}}, "logit_bias"),
        ({"input_ids": [1, False, 3]}, "input_ids"),
        ({"input_ids": [[1, 2], [True]]}, "input_ids"),
    ]
    for body, field in cases:
        res = httpx.post(f"{url}/generate", json=body)
        assert res.status_code == 400, (body, res.text)
        err = res.json()["error"]
        assert field in (err["param"] or "") or field in err["message"], (body, err)
    res = httpx.post(f"{url}/v1/completions", json={"prompt": [1, False], "max_tokens": 1})
    assert res.status_code == 400 and "prompt" in res.json()["error"]["param"]
    ok = {"text": "x", "rid": "fine-rid_1", "sampling_params": {"logit_bias": {"5": -100}}}
    assert httpx.post(f"{url}/generate", json=ok).status_code == 200
