"""/tokenize, /detokenize, /v1/models/{id} and `echo` on /v1/completions, on a live server."""

from __future__ import annotations

import httpx
import openai
import pytest


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def test_tokenize_and_detokenize_round_trip(server):
    text = "Hello, world! Café"
    r = httpx.post(f"{server.url}/tokenize", json={"prompt": text, "return_token_strs": True})
    body = r.json()
    assert r.status_code == 200 and body["count"] == len(body["tokens"]) > 3
    assert len(body["token_strs"]) == body["count"] and body["max_model_len"] > 0
    back = httpx.post(f"{server.url}/detokenize", json={"tokens": body["tokens"]}).json()
    assert back["prompt"] == back["text"] == text


def test_tokenize_messages_matches_the_chat_prompt(server, client):
    """The chat variant renders the template exactly as a chat request does (its prompt
    token count), with or without the assistant turn opened."""
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    r = httpx.post(f"{server.url}/tokenize", json={"messages": msgs}).json()
    chat = client.chat.completions.create(model=server.model, messages=msgs, max_tokens=1)
    assert r["count"] == chat.usage.prompt_tokens
    bare = httpx.post(f"{server.url}/tokenize",
                      json={"messages": msgs, "add_generation_prompt": False}).json()
    assert bare["tokens"] == r["tokens"][: bare["count"]] and bare["count"] < r["count"]
    text = httpx.post(f"{server.url}/detokenize", json={"tokens": r["tokens"]}).json()["text"]
    assert text.endswith("<|im_start|>assistant\n") and "Be brief." in text


def test_add_special_tokens_and_skip_special_tokens(server):
    with_bos = httpx.post(f"{server.url}/tokenize", json={"prompt": "<|im_start|>x"}).json()
    assert with_bos["tokens"][0] == 1  # the special token is one id
    text = httpx.post(f"{server.url}/detokenize",
                      json={"tokens": with_bos["tokens"], "skip_special_tokens": True}).json()
    assert text["text"] == "x"


@pytest.mark.parametrize("route, body, param", [
    ("/tokenize", {}, "prompt"),
    ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "prompt"),
    ("/tokenize", {"messages": []}, "messages"),
    ("/detokenize", {"tokens": [10**9]}, "tokens"),
    ("/detokenize", {"tokens": "abc"}, "tokens"),
])  # fmt: skip
def test_bad_input_is_a_400_naming_the_field(server, route, body, param):
    r = httpx.post(f"{server.url}{route}", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].startswith(param)


def test_retrieve_model(client, server):
    assert client.models.retrieve(server.model).id == server.model
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("no-such-model")
    assert e.value.body["code"] == "model_not_found"
    r = httpx.post(f"{server.url}/tokenize", json={"model": "no-such-model", "prompt": "x"})
    assert r.status_code == 404


def test_echo_puts_the_prompt_and_its_logprobs_first(client, server):
    kw = dict(model=server.model, prompt="echo this prompt", max_tokens=4, temperature=0)
    plain = client.completions.create(**kw, logprobs=1)
    echoed = client.completions.create(**kw, logprobs=1, echo=True)
    text = echoed.choices[0].text
    assert text == "echo this prompt" + plain.choices[0].text
    lp = echoed.choices[0].logprobs
    n_prompt = echoed.usage.prompt_tokens
    assert len(lp.tokens) == n_prompt + 4 and lp.token_logprobs[0] is None
    assert all(isinstance(x, float) for x in lp.token_logprobs[1:])
    assert lp.token_logprobs[n_prompt:] == pytest.approx(plain.choices[0].logprobs.token_logprobs)
    assert "".join(lp.tokens) == text and lp.text_offset[n_prompt] == len("echo this prompt")
    ids = httpx.post(f"{server.url}/tokenize", json={"prompt": "echo this prompt"}).json()
    by_ids = client.completions.create(**{**kw, "prompt": ids["tokens"]}, echo=True, n=2)
    assert [c.text for c in by_ids.choices] == [text, text]


def test_echo_streams_the_prompt_once_per_choice(client, server):
    kw = dict(model=server.model, prompt=["one", "two"], max_tokens=3, temperature=0)
    whole = client.completions.create(**kw, echo=True)
    texts = ["", ""]
    for chunk in client.completions.create(**kw, echo=True, stream=True):
        for c in chunk.choices:
            texts[c.index] += c.text
    assert texts == [c.text for c in whole.choices] and texts[1].startswith("two")
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**kw, echo=True, stream=True, logprobs=1)
    assert e.value.body["param"] == "echo"


def test_openapi_lists_the_routes_and_their_errors(server):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    for path, method in [("/tokenize", "post"), ("/detokenize", "post"),
                         ("/v1/models/{model}", "get")]:  # fmt: skip
        responses = spec["paths"][path][method]["responses"]
        assert "404" in responses and ("400" in responses or method == "get"), path
    chat = spec["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert {"tools", "tool_choice", "parallel_tool_calls", "separate_reasoning"} <= set(chat)
