"""Limits on the live `python -m radixlm.launch_server` server (--max-n 4, --queue-timeout 1,
--max-running-requests 2): n, queue timeouts, non-streaming disconnects, cache salts.

Tests that need requests to outlast a deadline use `slow_server`, whose every step takes
5 ms longer: the tiny model alone decodes 480 tokens in well under a second."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
from e2e.server_process import idle_info


def test_n_above_max_n_is_a_400_naming_n(server):
    body = {"prompt": "x", "max_tokens": 1, "n": 5}
    res = httpx.post(f"{server.url}/v1/completions", json=body)
    assert res.status_code == 400 and res.json()["error"]["param"] == "n"
    assert "--max-n" in res.json()["error"]["message"]
    native = {"text": "x", "sampling_params": {"max_new_tokens": 1, "n": 4}}
    assert httpx.post(f"{server.url}/generate", json=native).status_code == 200


def test_request_waiting_past_the_queue_timeout_is_aborted(slow_server):
    server = slow_server
    long = {"max_new_tokens": 480, "ignore_eos": True}
    rids = ["hog-0", "hog-1"]

    def hog(rid: str) -> None:
        body = {"text": f"hog {rid}", "sampling_params": long, "rid": rid}
        httpx.post(f"{server.url}/generate", json=body, timeout=60)

    threads = [threading.Thread(target=hog, args=(r,)) for r in rids]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while httpx.get(f"{server.url}/get_server_info").json()["num_running_reqs"] < 2:
        assert time.monotonic() < deadline, "the long requests did not start"
        time.sleep(0.02)
    # Both slots are taken: the next request waits in the queue.
    body = {"text": "patient", "sampling_params": {"max_new_tokens": 2}}
    out = httpx.post(f"{server.url}/generate", json=body, timeout=60).json()
    for rid in rids:
        httpx.post(f"{server.url}/abort_request", json={"rid": rid})
    for t in threads:
        t.join()
    reason = out["meta_info"]["finish_reason"]
    assert reason["type"] == "abort" and reason["message"].startswith("queue timeout")
    assert out["meta_info"]["completion_tokens"] == 0
    assert idle_info(server.url)["integrity_error"] is None


def test_non_streaming_disconnect_aborts_the_request(slow_server):
    server = slow_server
    body = {"prompt": "hang up", "max_tokens": 450, "ignore_eos": True}
    before = httpx.get(f"{server.url}/get_server_info").json()["generated_tokens"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json=body, timeout=httpx.Timeout(5, read=0.4))
    info = idle_info(server.url)
    assert info["num_running_reqs"] == 0 and info["num_waiting_reqs"] == 0
    assert info["generated_tokens"] - before < 450  # aborted, not run to the end
    time.sleep(0.5)  # the engine checks KV integrity once idle
    info = httpx.get(f"{server.url}/get_server_info").json()
    assert info["integrity_error"] is None and info["token_usage"] == 0


def test_cache_salt_through_the_openai_client(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    messages = [{"role": "user", "content": "a salted chat message about prefix caches"}]

    def cached(salt: str) -> int:
        extra = {"cache_salt": salt}
        out = client.chat.completions.create(
            model=server.model, messages=messages, max_tokens=2, extra_body=extra
        )
        return out.usage.prompt_tokens_details.cached_tokens

    assert cached("one") == 0
    assert cached("one") > 0
    assert cached("two") == 0
