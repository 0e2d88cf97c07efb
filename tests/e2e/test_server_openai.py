"""The OpenAI API on a live server, through the official `openai` client and raw HTTP."""

from __future__ import annotations

import time

import httpx
import openai
import pytest


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def test_models_lists_the_served_model(client, server):
    assert [m.id for m in client.models.list().data] == [server.model]


def test_completion_usage_reports_cached_tokens_on_repeat(client, server):
    kw = dict(model=server.model, prompt="a repeated prompt for the cache", max_tokens=5,
              temperature=0)  # fmt: skip
    first, second = client.completions.create(**kw), client.completions.create(**kw)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens > 0
    assert first.choices[0].text == second.choices[0].text
    assert first.usage.completion_tokens == 5 and first.choices[0].finish_reason == "length"


def test_completion_n_seed_logprobs_and_batch(client, server):
    out = client.completions.create(model=server.model, prompt=["x y", "z"], max_tokens=3, n=2,
                                    seed=7, logprobs=2)  # fmt: skip
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == 3 and len(lp.top_logprobs[0]) <= 2
    again = client.completions.create(model=server.model, prompt=["x y", "z"], max_tokens=3,
                                      n=2, seed=7)  # fmt: skip
    assert [c.text for c in again.choices] == [c.text for c in out.choices]


def test_stop_string_is_trimmed(client, server):
    base = client.completions.create(model=server.model, prompt="stop test", max_tokens=8,
                                     temperature=0).choices[0].text  # fmt: skip
    stop = base[2:4]
    assert stop
    cut = client.completions.create(model=server.model, prompt="stop test", max_tokens=8,
                                    temperature=0, stop=[stop]).choices[0]  # fmt: skip
    assert cut.text == base[: base.index(stop)] and cut.finish_reason == "stop"


def test_chat_and_streaming_agree(client, server):
    msgs = [{"role": "user", "content": "hello there"}]
    kw = dict(model=server.model, messages=msgs, max_tokens=6, temperature=0)
    whole = client.chat.completions.create(**kw, logprobs=True, top_logprobs=2)
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and len(choice.logprobs.content) == 6
    assert whole.usage.prompt_tokens > 5  # the chat template wrapped the message
    stream = client.chat.completions.create(**kw, stream=True,
                                            stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert chunks[-1].usage.completion_tokens == 6


def test_streamed_completions_with_n(client, server):
    stream = client.completions.create(model=server.model, prompt="s", max_tokens=4, n=2,
                                       stream=True)  # fmt: skip
    ends = [c.choices[0].index for c in stream if c.choices[0].finish_reason]
    assert sorted(ends) == [0, 1]


BAD = [
    ("/v1/completions", b"{not json", "body"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, "temperature"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -3}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0},
        "max_completion_tokens",
    ),
    ("/v1/completions", {"prompt": "x", "top_p": 2}, "top_p"),
    ("/v1/completions", {"prompt": "x", "n": "many"}, "n"),
    ("/v1/completions", {"prompt": ""}, "prompt"),
    ("/v1/completions", {"prompt": "x " * 600, "max_tokens": 1}, "prompt"),
    ("/v1/completions", {"prompt": [99999]}, "prompt"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ("/generate", {"text": "x", "sampling_params": {"top_k": -5}}, "top_k"),
    ("/generate", {"text": "x", "sampling_params": {"bogus": 1}}, "bogus"),
    ("/generate", {"sampling_params": {}}, "text"),
    ("/generate", {"text": ["a", "b"], "sampling_params": [{}]}, "sampling_params"),
]


@pytest.mark.parametrize(("route", "body", "param"), BAD)
def test_bad_input_is_a_400_naming_the_field(server, route, body, param):
    json_type = {"content-type": "application/json"}
    kw = {"content": body, "headers": json_type} if isinstance(body, bytes) else {"json": body}
    res = httpx.post(f"{server.url}{route}", **kw)
    assert res.status_code == 400, res.text
    err = res.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert param in (err["param"] or "") or param in err["message"]
    ok = httpx.post(f"{server.url}/generate", json={"text": "ok", "sampling_params":
                                                    {"max_new_tokens": 1}})  # fmt: skip
    assert ok.status_code == 200


def test_unknown_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    assert e.value.body["code"] == "model_not_found"


def test_dropped_stream_aborts_the_request(server):
    body = {"prompt": "disconnect", "max_tokens": 480, "ignore_eos": True, "stream": True}
    before = httpx.get(f"{server.url}/get_server_info").json()["generated_tokens"]
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # leave after the first token: the connection closes
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        info = httpx.get(f"{server.url}/get_server_info").json()
        if info["num_running_reqs"] == 0 and info["num_waiting_reqs"] == 0:
            break
        time.sleep(0.1)
    assert info["num_running_reqs"] == 0 and info["num_waiting_reqs"] == 0
    assert info["generated_tokens"] - before < 480  # aborted, not run to the end
