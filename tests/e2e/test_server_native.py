"""SGLang's native API on a live server (started by `radixlm serve`, stopped with Ctrl-C)."""

from __future__ import annotations

import itertools
import json
import threading
import time

import httpx
import pytest


@pytest.fixture(scope="module")
def server(cli_server):
    return cli_server


GREEDY = {"temperature": 0, "max_new_tokens": 6}


def _events(lines) -> list:
    """Parse SSE lines into JSON payloads; the last one must be [DONE]."""
    data = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def test_generate_returns_sglang_shape_and_reports_cached_tokens(server):
    body = {"text": "the cat sat on the mat and", "sampling_params": GREEDY}
    first = httpx.post(f"{server.url}/generate", json=body).json()
    second = httpx.post(f"{server.url}/generate", json=body).json()
    assert set(first) >= {"text", "output_ids", "meta_info"}
    meta = first["meta_info"]
    assert meta["completion_tokens"] == len(first["output_ids"]) == 6
    assert meta["finish_reason"] == {"type": "length", "length": 6}
    assert meta["cached_tokens"] == 0
    assert second["meta_info"]["cached_tokens"] > 0
    assert second["text"] == first["text"]  # the cache changes nothing


def test_list_input_returns_a_list_and_n_expands(server):
    body = {
        "text": ["one", "two"],
        "sampling_params": {"max_new_tokens": 3, "n": 2},
        "rid": ["a", "b"],
    }
    out = httpx.post(f"{server.url}/generate", json=body).json()
    assert [r["meta_info"]["id"] for r in out] == ["a-0", "a-1", "b-0", "b-1"]
    ids = httpx.post(f"{server.url}/generate", json={"input_ids": [[5, 6, 7], [8, 9]],
                                                     "sampling_params": GREEDY}).json()  # fmt: skip
    assert [r["meta_info"]["prompt_tokens"] for r in ids] == [3, 2]
    single = httpx.post(f"{server.url}/generate", json={"input_ids": [5, 6, 7]}).json()
    assert isinstance(single, dict)


def test_prompt_logprobs_with_zero_new_tokens(server):
    body = {"text": "hello world", "sampling_params": {"max_new_tokens": 0, "temperature": 0},
            "return_logprob": True, "logprob_start_len": 0, "return_text_in_logprobs": True,
            "top_logprobs_num": 2}  # fmt: skip
    out = httpx.post(f"{server.url}/generate", json=body).json()
    meta = out["meta_info"]
    assert out["output_ids"] == [] and meta["completion_tokens"] == 0
    lps = meta["input_token_logprobs"]
    assert len(lps) == meta["prompt_tokens"]
    assert lps[0][0] is None and all(lp < 0 for lp, _, _ in lps[1:])
    assert "".join(text for _, _, text in lps) == "hello world"
    assert meta["output_token_logprobs"] == []
    assert all(len(top) == 2 for top in meta["input_top_logprobs"][1:])


def test_stream_has_cumulative_text_and_ends_with_done(server):
    body = {"text": "streaming test", "sampling_params": GREEDY}
    whole = httpx.post(f"{server.url}/generate", json=body).json()
    with httpx.stream(
        "POST", f"{server.url}/generate", json={**body, "stream": True, "return_logprob": True}
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _events(list(r.iter_lines()))
    texts = [e["text"] for e in events]
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))
    assert texts[-1] == whole["text"]
    assert events[-1]["meta_info"]["completion_tokens"] == 6
    assert sum(len(e["meta_info"]["output_token_logprobs"]) for e in events) == 6


def test_abort_request_ends_a_running_stream(server):
    body = {"text": "abort me", "rid": "to-abort", "stream": True,
            "sampling_params": {"max_new_tokens": 400, "ignore_eos": True}}  # fmt: skip
    with httpx.stream("POST", f"{server.url}/generate", json=body, timeout=30) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert "to-abort" in first
        res = httpx.post(f"{server.url}/abort_request", json={"rid": "to-abort"})
        assert res.status_code == 200
        events = _events(list(lines))
    reason = events[-1]["meta_info"]["finish_reason"]
    assert reason["type"] == "abort"
    assert events[-1]["meta_info"]["completion_tokens"] < 400


def test_flush_cache_empties_the_tree(server):
    body = {"text": "flush me please", "sampling_params": GREEDY}
    httpx.post(f"{server.url}/generate", json=body)
    assert httpx.post(f"{server.url}/flush_cache").status_code == 200
    again = httpx.post(f"{server.url}/generate", json=body).json()
    assert again["meta_info"]["cached_tokens"] == 0
    info = httpx.get(f"{server.url}/get_server_info").json()
    assert info["integrity_error"] is None


def test_info_routes(server):
    info = httpx.get(f"{server.url}/get_model_info").json()
    assert info["model_path"] == server.model and info["is_generation"] is True
    server_info = httpx.get(f"{server.url}/get_server_info").json()
    assert server_info["max_total_tokens"] == 4096
    assert {"cache_hit_rate", "num_running_reqs", "num_waiting_reqs"} <= set(server_info)
    assert httpx.get(f"{server.url}/health_generate", timeout=30).status_code == 200
    assert httpx.get(f"{server.url}/v1/models").status_code == 200


def test_health_answers_fast_while_the_engine_is_busy(server):
    body = {"text": ["busy"] * 8, "sampling_params": {"max_new_tokens": 200, "ignore_eos": True}}
    t = threading.Thread(target=httpx.post, args=(f"{server.url}/generate",),
                         kwargs={"json": body, "timeout": 60})  # fmt: skip
    t.start()
    time.sleep(0.5)
    start = time.perf_counter()
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert time.perf_counter() - start < 2.0
    t.join()
