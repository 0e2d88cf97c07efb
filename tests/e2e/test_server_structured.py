"""Constrained decoding through a live server: native fields, OpenAI response_format, bad input."""

from __future__ import annotations

import json
import re

import httpx
import jsonschema
import openai
import pytest

IPV4 = r"(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}"
ITEM = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "price": {"type": "number", "minimum": 0, "maximum": 100},
        "in_stock": {"type": "boolean"},
    },
    "required": ["name", "price", "in_stock"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def test_native_regex_and_schema_batch(server):
    body = {
        "text": ["ip:", "json:"],
        "sampling_params": [
            {"regex": IPV4, "max_new_tokens": 32, "temperature": 0},
            {"json_schema": json.dumps(ITEM), "max_new_tokens": 96, "temperature": 0},
        ],
    }
    ip, item = httpx.post(f"{server.url}/generate", json=body, timeout=60).json()
    assert re.fullmatch(IPV4, ip["text"]) and ip["meta_info"]["finish_reason"]["type"] == "stop"
    jsonschema.validate(json.loads(item["text"]), ITEM)


def test_native_streaming_ebnf(server):
    body = {"text": "yes or no?", "stream": True,
            "sampling_params": {"ebnf": 'root ::= "yes" | "no"', "max_new_tokens": 8}}  # fmt: skip
    with httpx.stream("POST", f"{server.url}/generate", json=body, timeout=60) as res:
        chunks = [ln[6:] for ln in res.iter_lines() if ln.startswith("data: ")]
    assert chunks[-1] == "[DONE]"
    assert json.loads(chunks[-2])["text"] in ("yes", "no")


def test_openai_response_format_json_schema(client, server):
    out = client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "an item"}], max_tokens=96,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "item", "schema": ITEM, "strict": True}},
    )  # fmt: skip
    jsonschema.validate(json.loads(out.choices[0].message.content), ITEM)
    assert out.choices[0].finish_reason == "stop"


def test_openai_json_object_and_regex_extra(client, server):
    out = client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "json"}], max_tokens=64,
        response_format={"type": "json_object"}, seed=3, temperature=0.7,
    )  # fmt: skip
    choice = out.choices[0]
    if choice.finish_reason == "stop":  # a random model may write a long object
        assert isinstance(json.loads(choice.message.content), dict)
    else:
        assert choice.message.content.startswith("{")
    comp = client.completions.create(model=server.model, prompt="ip", max_tokens=32,
                                     extra_body={"regex": IPV4})  # fmt: skip
    assert re.fullmatch(IPV4, comp.choices[0].text)


BAD = [
    ("/generate", {"text": "x", "sampling_params": {"regex": "(unclosed"}}, "regex",
     "parenthesis"),
    ("/generate", {"text": "x", "sampling_params": {"json_schema": "{not json"}}, "json_schema",
     "not valid JSON"),
    ("/generate", {"text": "x", "sampling_params": {"json_schema": json.dumps(
        {"type": "array", "uniqueItems": True})}}, "json_schema", "uniqueItems"),
    ("/generate", {"text": "x", "sampling_params": {"ebnf": "root ::= nothing"}}, "ebnf",
     "not defined"),
    ("/generate", {"text": "x", "sampling_params": {"regex": "a", "json_schema": "{}"}},
     "json_schema", "at most one"),
    ("/v1/completions", {"prompt": "x", "regex": "[a-"}, "regex", "regex"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
     "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {
         "type": "object", "if": {"required": ["a"]}}}}}, "response_format", "'if'"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
     "response_format": {"type": "json_schema"}}, "response_format.json_schema", "required"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "regex": "a",
     "response_format": {"type": "json_object"}}, "response_format", "at most one"),
]  # fmt: skip


@pytest.mark.parametrize("route, body, param, words", BAD)
def test_bad_grammars_are_a_400_naming_the_field(server, route, body, param, words):
    res = httpx.post(f"{server.url}{route}", json=body, timeout=30)
    assert res.status_code == 400, res.text
    err = res.json()["error"]
    assert err["param"] == param and words in err["message"], err
    assert err["type"] == "invalid_request_error"
    ok = httpx.post(f"{server.url}/generate", timeout=30,
                    json={"text": "x", "sampling_params": {"regex": "ab", "max_new_tokens": 4}})
    assert ok.status_code == 200 and ok.json()["text"] == "ab"


def test_streamed_logprobs_line_up_with_jump_forward_steps(server):
    body = {"text": "item:", "stream": True, "return_logprob": True,
            "sampling_params": {"json_schema": json.dumps(ITEM), "max_new_tokens": 96,
                                "temperature": 0}}  # fmt: skip
    whole = httpx.post(f"{server.url}/generate", json={**body, "stream": False}, timeout=60)
    with httpx.stream("POST", f"{server.url}/generate", json=body, timeout=60) as res:
        chunks = [json.loads(ln[6:]) for ln in res.iter_lines()
                  if ln.startswith("data: ") and ln != "data: [DONE]"]  # fmt: skip
    entries = [e for c in chunks for e in c["meta_info"]["output_token_logprobs"]]
    assert [e[1] for e in entries] == whole.json()["output_ids"]
    assert chunks[-1]["text"] == whole.json()["text"]
    assert len(chunks) < len(entries)  # some chunks carried a whole jump-forward draft
