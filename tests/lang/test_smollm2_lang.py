"""The language on the real SmolLM2 weights: select on both backends, run_batch cache hits."""

from __future__ import annotations

import pytest
from e2e.server_process import serve
from lang.oracle import oracle_cached_tokens

import radixlm
import radixlm.lang as rl

pytestmark = pytest.mark.slow

# (question, choices, the correct choice)
QUESTIONS = [
    ("What is the capital of France?", ["Paris", "Berlin", "Madrid"], "Paris"),
    ("What is the capital of Japan?", ["Beijing", "Tokyo", "Seoul"], "Tokyo"),
    ("What is the capital of Italy?", ["Rome", "Vienna", "Athens"], "Rome"),
    ("What is the capital of Germany?", ["Munich", "Berlin", "Hamburg"], "Berlin"),
    ("What is the capital of Spain?", ["Lisbon", "Barcelona", "Madrid"], "Madrid"),
    ("What colour is the sky on a clear day?", ["blue", "green", "red"], "blue"),
    ("What colour is grass?", ["purple", "green", "orange"], "green"),
    ("What colour is snow?", ["black", "white", "yellow"], "white"),
    ("What colour is a ripe banana?", ["yellow", "blue", "grey"], "yellow"),
    ("What colour is coal?", ["white", "pink", "black"], "black"),
    ("What is 2 + 2?", ["3", "4", "5"], "4"),
    ("What is 5 + 5?", ["10", "12", "55"], "10"),
    ("What is 3 times 3?", ["6", "9", "33"], "9"),
    ("What is 10 minus 7?", ["3", "7", "17"], "3"),
    ("What is half of 8?", ["2", "4", "16"], "4"),
    ("How many legs does a dog have?", ["two", "four", "six"], "four"),
    ("How many days are in a week?", ["five", "seven", "ten"], "seven"),
    ("Which animal says moo?", ["cow", "cat", "duck"], "cow"),
    ("Which planet do we live on?", ["Mars", "Earth", "Venus"], "Earth"),
    ("What do bees make?", ["milk", "honey", "silk"], "honey"),
]


@rl.function
def multiple_choice(s, question, choices):
    s += rl.user(question + " Answer with one of: " + ", ".join(choices) + ".")
    s += rl.assistant(rl.select("answer", choices=choices))


@pytest.fixture(scope="module")
def smollm2_engine(smollm2):
    loaded, tokenizer = smollm2  # the session's copy of the weights, loaded once
    eng = radixlm.Engine(loaded=loaded, tokenizer=tokenizer, max_total_tokens=16384)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def smollm2_server(smollm2_path):
    yield from serve(str(smollm2_path), 16384, timeout=180)


def test_select_answers_alike_on_engine_and_server(smollm2_engine, smollm2_server):
    args = [{"question": q, "choices": c} for q, c, _ in QUESTIONS]
    engine = rl.EngineBackend(smollm2_engine)
    http = rl.RuntimeEndpoint(smollm2_server)
    assert engine.chat_template == http.chat_template
    assert engine.chat_template.default_system_prompt  # SmolLM2's template adds one
    by_engine = [s["answer"] for s in multiple_choice.run_batch(args, backend=engine)]
    by_http = [s["answer"] for s in multiple_choice.run_batch(args, backend=http)]
    correct = sum(a == right for a, (_, _, right) in zip(by_engine, QUESTIONS, strict=True))
    print(f"select on SmolLM2: {correct}/{len(QUESTIONS)} correct")
    # The 135M model is weak (8 of 20 right when this was written, greedy generation does
    # no better); what must hold is that both backends pick the same answers.
    assert by_engine == by_http
    http.close()


FEW_SHOT = (
    "Classify the sentiment of each review as positive or negative.\n"
    "Review: The food was wonderful and the staff were kind.\nSentiment: positive\n"
    "Review: I waited an hour and the soup was cold.\nSentiment: negative\n"
    "Review: Best concert I have been to in years.\nSentiment: positive\n"
    "Review: The room smelled of smoke and the bed was broken.\nSentiment: negative\n"
)
REVIEWS = ["Lovely view and a friendly host.", "The battery died after two days.",
           "I would happily come back.", "Rude waiter, tiny portions.",
           "The film was a masterpiece.", "Terrible sound, I left early.",
           "Fast delivery and great quality.", "It broke the first time I used it."]  # fmt: skip


@rl.function
def sentiment(s, review):
    s += FEW_SHOT + "Review: " + review + "\nSentiment:"
    s += rl.gen("label", max_tokens=3, temperature=0, stop="\n")


def test_run_batch_of_a_few_shot_program_hits_the_cache_like_the_oracle(smollm2_engine):
    assert smollm2_engine.flush_cache()
    backend = rl.EngineBackend(smollm2_engine, record_requests=True)
    states = sentiment.run_batch([{"review": r} for r in REVIEWS], backend=backend)
    assert all(s.error is None for s in states)
    records = backend.usage.records
    tokens = [smollm2_engine.tokenizer.encode(r.prompt) for r in records]
    assert [len(t) for t in tokens] == [r.prompt_tokens for r in records]
    oracle = oracle_cached_tokens(tokens) / sum(map(len, tokens))
    rate = backend.usage.cache_hit_rate
    print(f"run_batch few-shot on SmolLM2: hit rate {rate:.3f}, oracle {oracle:.3f}")
    assert rate >= 0.9 * oracle
