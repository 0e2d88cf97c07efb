"""Tool calling and reasoning output on a live server, through the official `openai` client.

The tiny random model's chat template (ChatML) has no tool support, so the server writes
the tools into the system prompt in the Hermes format and reads calls with the Hermes
parser; the model is random, so whatever it decides by itself is only checked for shape,
while `required` and named choices (grammar-enforced) are checked for validity.
"""

from __future__ import annotations

import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest
from e2e.server_process import free_port, start_server, stop_server

from radixlm.bench.oracle import OracleCache

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 8},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"tz": {"enum": ["UTC", "CET", "PST"]}},
    "required": ["tz"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": TIME}},
]  # fmt: skip
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def long_context_model(src: Path, dst: Path) -> Path:
    """A copy of tiny model `src` whose context is 4096 positions (rope takes any length),
    room for the tool descriptions the byte-level tiny tokenizer spells out."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["max_position_embeddings"] = 4096
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="module")
def url(tiny_model_factory, tmp_path_factory):
    model = long_context_model(tiny_model_factory("llama"), tmp_path_factory.mktemp("t") / "m")
    port = free_port()
    cmd = [sys.executable, "-m", "radixlm.launch_server", "--log-level", "warning",
           "--dtype", "float32", "--model", str(model), "--port", str(port),
           "--max-total-tokens", "4096", "--reasoning-parser", "qwen3"]  # fmt: skip
    proc = start_server(cmd, port)
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)


def _check_calls(calls, names=SCHEMAS) -> None:
    """Each call has an id, type function, a listed name, and arguments valid for it."""
    assert calls
    assert len({c.id for c in calls}) == len(calls)
    for c in calls:
        assert c.id.startswith("call_") and c.type == "function"
        assert c.function.name in names
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])


def _chat(client, seed: int, max_tokens: int = 160, **kw):
    return client.chat.completions.create(
        model="default", messages=ASK, tools=TOOLS, max_tokens=max_tokens, temperature=1.0,
        seed=seed, **kw)  # fmt: skip


@pytest.mark.parametrize("choice", ["required", "named"])
def test_constrained_calls_validate_for_50_seeds(client, choice):
    tc = "required" if choice == "required" else {"type": "function",
                                                  "function": {"name": "get_time"}}
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda s: _chat(client, s, tool_choice=tc,
                                             parallel_tool_calls=False), range(50)))  # fmt: skip
    names = set()
    for out in outs:
        choice_ = out.choices[0]
        assert choice_.finish_reason == "tool_calls", choice_
        calls = choice_.message.tool_calls
        assert len(calls) == 1 and choice_.message.content is None
        _check_calls(calls)
        names.add(calls[0].function.name)
    assert names == ({"get_time"} if choice == "named" else names) and names


def _streamed(client, seed: int, **kw):
    """(content, {index: (id, name, arguments)}, finish_reason, chunks) of a stream."""
    content, calls, reason, chunks = "", {}, None, []
    for chunk in _chat(client, seed, stream=True, **kw):
        if not chunk.choices:
            continue
        ch = chunk.choices[0]
        chunks.append(ch)
        content += ch.delta.content or ""
        for tc in ch.delta.tool_calls or []:
            if tc.id is not None:  # a call begins: id, name, before any of its arguments
                assert tc.index not in calls and tc.function.name
                calls[tc.index] = [tc.id, tc.function.name, tc.function.arguments or ""]
            else:
                assert tc.index in calls and tc.function.name is None
                calls[tc.index][2] += tc.function.arguments
        reason = ch.finish_reason or reason
    return content, {i: tuple(v) for i, v in calls.items()}, reason, chunks


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function",
                                                      "function": {"name": "get_weather"}}])
def test_streamed_calls_equal_the_whole_answer(client, tool_choice):
    kw = dict(tool_choice=tool_choice, parallel_tool_calls=False)
    for seed in (1, 2):
        whole = _chat(client, seed, **kw).choices[0]
        _, calls, reason, chunks = _streamed(client, seed, **kw)
        assert reason == whole.finish_reason == "tool_calls"
        got = [(c[1], c[2]) for _, c in sorted(calls.items())]
        assert got == [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
        assert sum(1 for ch in chunks if ch.delta.tool_calls) >= 2  # arguments in pieces


def test_parallel_calls_in_one_turn(client):
    """required with parallel calls allowed: some seed makes two calls in one turn, each
    with its own index and id; with parallel_tool_calls false never more than one."""
    found = None
    for seed in range(40):
        out = _chat(client, seed, tool_choice="required", max_tokens=300).choices[0]
        calls = out.message.tool_calls
        if len(calls) >= 2 and out.finish_reason == "tool_calls":
            found = seed
            _check_calls(calls)
            break
    assert found is not None, "no seed made two calls"
    _, streamed, reason, _ = _streamed(client, found, tool_choice="required", max_tokens=300)
    assert sorted(streamed) == list(range(len(calls))) and reason == "tool_calls"
    assert [s[1:] for _, s in sorted(streamed.items())] == \
        [(c.function.name, c.function.arguments) for c in calls]
    one = _chat(client, found, tool_choice="required", parallel_tool_calls=False)
    assert len(one.choices[0].message.tool_calls) == 1


def test_none_and_auto_answer_in_the_protocol_shape(client):
    """`none` never reads calls; `auto` leaves the choice to the (random) model: content or
    valid-shaped calls, finish_reason saying which."""
    for seed in range(3):
        none = _chat(client, seed, tool_choice="none", max_tokens=12).choices[0]
        assert none.message.tool_calls is None and isinstance(none.message.content, str)
        assert none.finish_reason in ("stop", "length")
        auto = _chat(client, seed, tool_choice="auto", max_tokens=12).choices[0]
        if auto.message.tool_calls:
            assert auto.finish_reason in ("tool_calls", "length")
        else:
            assert auto.finish_reason in ("stop", "length") and auto.message.content is not None
        content, calls, reason, _ = _streamed(client, seed, tool_choice="auto", max_tokens=12)
        assert content == (auto.message.content or "") and reason == auto.finish_reason
        assert [(n, a) for _, n, a in calls.values()] == \
            [(c.function.name, c.function.arguments) for c in auto.message.tool_calls or []]


FORCED_CALL = '<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call>'


def test_auto_reads_a_call_the_model_writes(client):
    """`auto` with output forced (through `ebnf`) to a Hermes call: the parser finds it,
    streamed and not, with finish_reason tool_calls."""
    ebnf = f"root ::= {json.dumps('Checking. ' + FORCED_CALL)}"
    kw = dict(tool_choice="auto", extra_body={"ebnf": ebnf})
    whole = _chat(client, 0, **kw).choices[0]
    assert whole.finish_reason == "tool_calls" and whole.message.content == "Checking. "
    [call] = whole.message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_time", {"tz": "CET"})
    content, calls, reason, _ = _streamed(client, 0, **kw)
    assert (content, reason) == ("Checking. ", "tool_calls")
    assert [(n, a) for _, n, a in calls.values()] == [("get_time", call.function.arguments)]


def test_a_broken_call_is_content_with_finish_stop(client):
    broken = '<tool_call>{"name": get_time}</tool_call>'
    kw = dict(tool_choice="auto", extra_body={"ebnf": f"root ::= {json.dumps(broken)}"})
    whole = _chat(client, 0, **kw).choices[0]
    assert (whole.message.content, whole.message.tool_calls) == (broken, None)
    assert whole.finish_reason == "stop"
    content, calls, reason, _ = _streamed(client, 0, **kw)
    assert (content, calls, reason) == (broken, {}, "stop")


def test_reasoning_is_split_and_a_call_inside_it_is_not_made(client):
    """qwen3 reasoning parser: `<think>` text goes to reasoning_content (a call written
    there is not made); separate_reasoning false gives the raw text as content."""
    text = f"<think>maybe {FORCED_CALL}</think>It is noon."
    kw = dict(tool_choice="auto", extra_body={"ebnf": f"root ::= {json.dumps(text)}"})
    msg = _chat(client, 0, **kw).choices[0]
    assert msg.finish_reason == "stop" and msg.message.tool_calls is None
    assert msg.message.content == "It is noon."
    assert msg.message.reasoning_content == f"maybe {FORCED_CALL}"
    raw = _chat(client, 0, tool_choice="auto",
                extra_body={"ebnf": kw["extra_body"]["ebnf"], "separate_reasoning": False})
    assert raw.choices[0].message.content == text and raw.choices[0].message.tool_calls is None
    reasoning, content = "", ""
    for chunk in _chat(client, 0, stream=True, **kw):
        for ch in chunk.choices:
            reasoning += getattr(ch.delta, "reasoning_content", None) or ""
            content += ch.delta.content or ""
    assert (reasoning, content) == (f"maybe {FORCED_CALL}", "It is noon.")


def test_two_tool_conversation(client, url):
    """The model calls a tool, the client sends the result, the model answers."""
    first = _chat(client, 3, tool_choice="required", parallel_tool_calls=False).choices[0]
    [call] = first.message.tool_calls
    history = [*ASK, first.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'}]
    answer = client.chat.completions.create(model="default", messages=history, tools=TOOLS,
                                            tool_choice="none", max_tokens=8, seed=0)
    assert isinstance(answer.choices[0].message.content, str)
    assert answer.choices[0].message.tool_calls is None
    rendered = httpx.post(f"{url}/tokenize", json={"messages": history, "tools": TOOLS})
    text = httpx.post(f"{url}/detokenize", json={"tokens": rendered.json()["tokens"]}).json()
    assert '<tool_response>\n{"temp": 21}\n</tool_response>' in text["text"]
    assert f'"name": "{call.function.name}"' in text["text"] and "<tools>" in text["text"]
    assert answer.usage.prompt_tokens == rendered.json()["count"]


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
     "tools.0.function.name"),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "tools.1.function.name"),
    ({"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "nope"}}}}}]},
     "tools.0.function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
     "tools.0.function.parameters"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "other"}}},
     "tool_choice.function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
     "tool_choice"),
    ({"messages": [*ASK, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
     "messages.1.tool_call_id"),
])  # fmt: skip
def test_bad_tool_fields_are_400_naming_the_field(url, body, param):
    r = httpx.post(f"{url}/v1/chat/completions",
                   json={"messages": ASK, "max_tokens": 2, **body})  # fmt: skip
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param or r.json()["error"]["param"].startswith(param)
    assert httpx.get(f"{url}/health").status_code == 200


def _agent_loop(client, url, turns: int, first: str, step) -> list[tuple[int, int, int]]:
    """Run `turns` turns; `step(history, turn)` asks the model and returns the messages to
    append. Returns (cached, oracle, prompt) per turn; oracle is what a cache holding every
    earlier prompt could serve of this one (`radixlm.bench.oracle`; the answers' token ids
    are not in the OpenAI API, so the oracle leaves them out)."""
    history = [{"role": "system", "content": first}, ASK[0]]
    oracle = OracleCache()
    out = []
    for turn in range(turns):
        ids = httpx.post(f"{url}/tokenize", json={"messages": history, "tools": TOOLS}).json()
        ids = ids["tokens"]
        reply, new = step(history, turn)
        assert reply.usage.prompt_tokens == len(ids)
        cached = reply.usage.prompt_tokens_details.cached_tokens
        out.append((cached, oracle.match(ids), len(ids)))
        oracle.insert(ids)
        history += new
    return out


def test_agent_loop_reuses_the_cache_every_turn(client, url):
    """10 turns of call -> tool result with the same system prompt and tools: from the
    second turn on, cached tokens are at least 90% of the oracle."""

    def step(history, turn):
        reply = client.chat.completions.create(
            model="default", messages=history, tools=TOOLS, tool_choice="required",
            parallel_tool_calls=False, max_tokens=80, temperature=0)  # fmt: skip
        msg = reply.choices[0].message
        [call] = msg.tool_calls
        result = {"role": "tool", "tool_call_id": call.id, "content": f'{{"turn": {turn}}}'}
        return reply, [msg.model_dump(exclude_none=True), result]

    turns = _agent_loop(client, url, 10, "You are agent 7f3a. Use the tools.", step)
    print("\nagent loop (cached, oracle, prompt):", turns)
    assert turns[0][0] < turns[0][2] // 2  # a new system prompt: little to reuse
    for cached, oracle, prompt in turns[1:]:
        assert oracle <= cached + prompt // 10 and cached >= 0.9 * oracle, turns
        assert cached < prompt


def test_dropping_reasoning_from_the_history_keeps_the_prompt_prefix(client, url):
    """Multi-turn with reasoning: a client that sends back only the answers (the
    reasoning dropped) still reuses every earlier prompt; the reasoning it generated is
    what cannot be reused. Prints the per-turn hit rates for both ways of sending it."""
    text = "<think>the user wants weather, a tool is not needed</think>It is sunny."
    ebnf = f"root ::= {json.dumps(text)}"
    rates = {}
    for keep in (False, True):

        def step(history, turn, keep=keep):
            reply = client.chat.completions.create(
                model="default", messages=history, tools=TOOLS, tool_choice="none",
                max_tokens=200, temperature=0, extra_body={"ebnf": ebnf})  # fmt: skip
            msg = reply.choices[0].message
            assert msg.content == "It is sunny."
            content = text if keep else msg.content
            more = {"role": "user", "content": f"And on day {turn + 2}?"}
            return reply, [{"role": "assistant", "content": content}, more]

        turns = _agent_loop(client, url, 6, f"You are agent {keep}. Think first.", step)
        for cached, oracle, _ in turns[1:]:
            assert cached >= 0.9 * oracle, turns
        rates[keep] = [round(c / p, 3) for c, _, p in turns]
    print("\nhit rate per turn, reasoning dropped:", rates[False])
    print("hit rate per turn, reasoning kept in the history:", rates[True])


def test_each_choice_reads_its_own_calls(client):
    """n=2: every choice gets its own parser, its own call ids, valid arguments."""
    out = _chat(client, 5, n=2, tool_choice="required", parallel_tool_calls=False)
    assert [c.index for c in out.choices] == [0, 1]
    ids = [c.message.tool_calls[0].id for c in out.choices]
    assert len(set(ids)) == 2
    for c in out.choices:
        assert c.finish_reason == "tool_calls"
        _check_calls(c.message.tool_calls)
