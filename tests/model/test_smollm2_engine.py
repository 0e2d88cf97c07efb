"""The engine on the real SmolLM2: radix cache on and off agree, and answers make sense."""

from __future__ import annotations

import pytest
from helpers.engine_checks import assert_clean

import radixlm

QUESTIONS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "What is 2 + 2?",
    "Which planet is known as the red planet?",
]
SYSTEM = "You are a concise assistant. Answer in one short sentence. " * 3


@pytest.fixture(scope="module")
def engines(smollm2):
    loaded, tok = smollm2
    on = radixlm.Engine(loaded=loaded, tokenizer=tok, max_total_tokens=4096, debug=True)
    off = radixlm.Engine(
        loaded=loaded, tokenizer=tok, max_total_tokens=4096, disable_radix_cache=True
    )
    yield on, off
    on.shutdown()
    off.shutdown()


def chat_ids(tok, question: str) -> list[int]:
    return tok.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    )


def test_radix_on_off_identical_on_smollm2(engines, smollm2):
    on, off = engines
    _, tok = smollm2
    prompts = [chat_ids(tok, q) for q in QUESTIONS]
    params = {"temperature": 0, "max_new_tokens": 16}
    a = on.generate(input_ids=prompts, sampling_params=params)
    b = off.generate(input_ids=prompts, sampling_params=params)
    assert [x["output_ids"] for x in a] == [x["output_ids"] for x in b]
    # The shared system prompt was computed once: every later request reused it.
    assert sorted(x["meta_info"]["cached_tokens"] for x in a)[1] > 30
    assert "Paris" in a[0]["text"]
    assert_clean(on)
    assert_clean(off)
