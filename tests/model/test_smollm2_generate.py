"""End to end on the embedded SmolLM2: the terminal chat on the Engine, the greedy answer,
the streamed text, and a second turn served from the radix cache."""

from __future__ import annotations

import io

import pytest

import radixlm
from radixlm.chat import ChatSession, answer
from radixlm.config import ChatConfig, LoadConfig
from radixlm.sampling.params import SamplingParams

GREEDY = SamplingParams(max_new_tokens=24, temperature=0)


@pytest.fixture(scope="module")
def engine(smollm2):
    loaded, tok = smollm2
    with radixlm.Engine(loaded=loaded, tokenizer=tok, max_total_tokens=4096) as eng:
        yield eng


def session(engine, system=None) -> ChatSession:
    return ChatSession(engine, ChatConfig(load=LoadConfig(), params=GREEDY, system=system))


def test_capital_of_france_mentions_paris(engine):
    out = io.StringIO()
    meta = answer(session(engine), "What is the capital of France?", out)
    assert "Paris" in out.getvalue()
    assert meta["finish_reason"]["type"] == "stop", "a short answer ends its turn"


def test_the_chat_answers_as_the_engine_does_and_turn_two_reuses_turn_one(engine):
    chat = session(engine, system="You are a concise assistant.")
    first = list(chat.say("Name a large city in Japan."))
    turn1_prompt, turn1_ids = first[-1]["meta_info"]["prompt_tokens"], chat.history
    want = engine.generate(input_ids=chat.history[:turn1_prompt], sampling_params=GREEDY)
    assert [t for c in first for t in c["output_ids"]] == want["output_ids"]
    assert first[-1]["text"] == want["text"]

    second = list(chat.say("And one in Italy?"))
    meta = second[-1]["meta_info"]
    # Everything of turn 1 with K/V is cached: its prompt and its answer, all but the
    # end-of-turn token (sampled last, never fed back).
    assert meta["cached_tokens"] >= len(turn1_ids) - 1
    assert chat.history[: len(turn1_ids)] == turn1_ids
