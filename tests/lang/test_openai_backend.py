"""Programs on the OpenAI-compatible routes of a live server, through the official client."""

from __future__ import annotations

import re

import httpx
import pytest

import radixlm.lang as rl
from radixlm.lang.backends.openai import match_choice


@pytest.fixture
def chat_backend(lang_server):
    return rl.OpenAI("default", base_url=f"{lang_server}/v1", record_requests=True)


@rl.function
def chat(s, question):
    s += rl.system("Be brief.")
    s += rl.user(question)
    s += rl.assistant(rl.gen("reply", max_tokens=8, temperature=0))
    s += rl.user("Yes or no?")
    s += rl.assistant(rl.select("verdict", choices=["yes", "no"]))


def test_chat_model_gets_the_turns_as_messages(chat_backend, lang_server):
    state = chat.run(question="Is the sky blue?", backend=chat_backend)
    assert [m["role"] for m in state.messages()] == [
        "system", "user", "assistant", "user", "assistant"
    ]
    # The same turns sent to /v1/chat/completions directly give the same greedy reply.
    body = {"messages": state.messages()[:2], "max_tokens": 8, "temperature": 0}
    direct = httpx.post(f"{lang_server}/v1/chat/completions", json=body, timeout=60).json()
    assert direct["choices"][0]["message"]["content"] == state["reply"]
    assert state["verdict"] in ("yes", "no") and state.messages()[4]["content"] == state["verdict"]
    second = chat_backend.usage.records[1]
    assert second.kind == "select" and second.cached_tokens > 0  # the first turns were reused


def test_completion_model_gets_the_text(lang_server):
    backend = rl.OpenAI("default", base_url=f"{lang_server}/v1", is_chat_model=False)

    @rl.function
    def complete(s):
        s += "Q: What is 2 + 2?\nA:" + rl.gen("a", max_tokens=6, temperature=0, ignore_eos=True)

    engine_side = rl.RuntimeEndpoint(lang_server)
    expected = complete.run(backend=engine_side)["a"]
    state = complete.run(backend=backend)
    assert state["a"] == expected  # same greedy text through either API
    streamed = complete.run(backend=backend, stream=True)
    assert "".join(streamed.text_iter("a")) == expected
    engine_side.close()


def test_regex_over_openai(chat_backend):
    @rl.function
    def code(s):
        s += rl.user("Give a code.")
        s += rl.assistant(rl.gen("code", regex=r"[A-Z]{2}[0-9]", max_tokens=8))

    try:
        state = code.run(backend=chat_backend)
    except rl.ConstrainedDecodingUnsupported as e:
        pytest.skip(f"the server has no constrained decoding yet: {e}")
    assert re.fullmatch(r"[A-Z]{2}[0-9]", state["code"])


def test_errors_carry_the_servers_message(chat_backend):
    @rl.function
    def bad(s):
        s += rl.user("hi")
        s += rl.assistant(rl.gen("r", max_tokens=4, top_p=2.0))

    with pytest.raises(rl.RequestError, match="top_p") as info:
        bad.run(backend=chat_backend)
    assert info.value.status == 400


def test_a_chat_gen_must_be_a_whole_assistant_turn(chat_backend):
    @rl.function
    def half(s):
        s += rl.user("hi")
        s += rl.assistant("Sure, " + rl.gen("r", max_tokens=4))

    with pytest.raises(rl.RequestError, match="whole assistant turn"):
        half.run(backend=chat_backend)


def test_match_choice_takes_the_longest_shared_start():
    assert match_choice(["yes", "no"], "no, not at all").choice == "no"
    assert match_choice(["A", "Apple pie"], "Apple tart").choice == "Apple pie"
    assert match_choice(["x", "y"], "zzz").choice == "x"  # nothing shared: the first
