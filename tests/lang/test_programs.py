"""The same small programs on the in-process engine and on a live server (RuntimeEndpoint)."""

from __future__ import annotations

import re

import pytest
from lang.conftest import flush
from lang.oracle import oracle_cached_tokens

import radixlm.lang as rl

FEW_SHOT = "Q: What is the capital of France?\nA: Paris\nQ: What colour is the sky?\nA: blue\n"


@rl.function
def few_shot(s, question, **gen_options):
    s += FEW_SHOT + "Q: " + question + "\nA:"
    s += rl.gen("answer", max_tokens=12, temperature=0, **gen_options)


def test_gen_stops_at_a_stop_string(backend):
    free = few_shot.run(question="Hello?", backend=backend, ignore_eos=True)["answer"]
    assert len(free) > 4
    stop = free[2:4]  # a stop string the model is known to produce there
    cut = free[: free.index(stop)]
    state = few_shot.run(question="Hello?", backend=backend, ignore_eos=True, stop=stop)
    assert state["answer"] == cut
    assert state.text().endswith("\nA:" + cut)
    assert state.get_meta_info("answer")["finish_reason"]["type"] == "stop"


@rl.function
def multi_turn(s, questions):
    s += rl.system("You answer briefly.")
    for i, q in enumerate(questions):
        with s.user():
            s += q
        s += rl.assistant(rl.gen(f"reply{i}", max_tokens=6, temperature=0))


def test_roles_are_written_with_the_models_chat_template(backend, lang_engine):
    state = multi_turn.run(questions=["Hi there", "What is 2 + 2?"], backend=backend)
    messages = state.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[2]["content"] == state["reply0"] and messages[4]["content"] == state["reply1"]
    # The text is what the model's own template makes of the same turns.
    assert state.text() == lang_engine.tokenizer.render_chat(messages, add_generation_prompt=False)
    gens = [r for r in backend.usage.records if r.kind == "gen"]
    rendered = lang_engine.tokenizer.render_chat(messages[:4])
    assert gens[1].prompt == rendered
    assert gens[1].cached_tokens >= gens[0].prompt_tokens - 1  # the first turn was reused


@rl.function
def pick_colour(s):
    s += "The sky on a clear day is"
    s += rl.select("colour", choices=[" blue", " green", " the colour of the sea"])


def reference_scores(engine, prompt: str, choices: list[str]) -> list[float]:
    """Mean logprob of the tokens holding each choice, from full prompt logprobs."""
    tok = engine.tokenizer
    scores = []
    for choice in choices:
        ids = tok.encode(prompt + choice)
        first = next(k for k in range(len(ids)) if len(tok.decode_raw(ids[: k + 1])) > len(
            tok.decode_raw(tok.encode(prompt)))
        )  # fmt: skip
        out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 0},
                              return_logprob=True, logprob_start_len=0)  # fmt: skip
        lps = [e[0] for e in out["meta_info"]["input_token_logprobs"][first:]]
        scores.append(sum(lps) / len(lps))
    return scores


def test_select_scores_every_choice_and_takes_the_best(backend, lang_engine):
    state = pick_colour.run(backend=backend)
    scores = state.get_meta_info("colour")["scores"]
    choices = [" blue", " green", " the colour of the sea"]
    assert state["colour"] == choices[max(range(3), key=lambda i: scores[i])]
    assert state.text() == "The sky on a clear day is" + state["colour"]
    assert scores == pytest.approx(reference_scores(lang_engine, "The sky on a clear day is",
                                                    choices), abs=1e-3)  # fmt: skip
    kinds = [r.kind for r in backend.usage.records]
    assert kinds == ["commit", "select", "select", "select"]  # one batched request
    prefix_tokens = backend.usage.records[0].prompt_tokens
    # Logprobs start 2 tokens before the end (token healing), computed from the token before.
    assert all(r.cached_tokens >= prefix_tokens - 3 for r in backend.usage.records[1:])


@rl.function
def branches(s):
    s += "Once upon a time there was a little robot who wanted to learn. "
    forks = s.fork(3)
    for i, f in enumerate(forks):
        f += f"Idea {i}:" + rl.gen("idea", max_tokens=5, temperature=0.8)
    forks.join()


def test_fork_commits_the_prefix_once_and_branches_hit_it(backend):
    state = branches.run(backend=backend)
    ideas = state["idea"]
    assert isinstance(ideas, list) and len(ideas) == 3
    assert state.text().endswith("learn. ")  # the parent's text is untouched by its forks
    commit, *gens = backend.usage.records
    assert commit.kind == "commit" and commit.cached_tokens == 0 and len(gens) == 3
    assert all(g.kind == "gen" and g.cached_tokens >= commit.prompt_tokens - 1 for g in gens)


def test_run_batch_warms_the_shared_prefix_and_keeps_order(backend, lang_engine):
    questions = [f"What is {i} plus {i}?" for i in range(16)]
    states = few_shot.run_batch([{"question": q} for q in questions], backend=backend,
                                num_threads=8)  # fmt: skip
    assert len(states) == 16
    for q, state in zip(questions, states, strict=True):
        assert state.error is None
        assert state.text() == FEW_SHOT + "Q: " + q + "\nA:" + state["answer"]
    warm, *gens = backend.usage.records
    assert warm.kind == "commit" and warm.prompt == FEW_SHOT + "Q: What is "
    assert len(gens) == 16
    assert all(g.cached_tokens >= warm.prompt_tokens - 2 for g in gens)
    tokens = [lang_engine.tokenizer.encode(r.prompt) for r in backend.usage.records]
    assert [len(t) for t in tokens] == [r.prompt_tokens for r in backend.usage.records]
    oracle = oracle_cached_tokens(tokens) / sum(map(len, tokens))
    assert backend.usage.cache_hit_rate >= 0.9 * oracle


def test_streaming_yields_the_text_as_it_is_generated(backend):
    state = few_shot.run(question="Tell me more", backend=backend, ignore_eos=True, stream=True)
    pieces = list(state.text_iter("answer"))
    assert len(pieces) > 1 and "".join(pieces) == state["answer"]
    assert "".join(state.text_iter()) == state.sync().text()


def test_a_failed_request_raises_with_the_backends_message(backend):
    with pytest.raises(rl.RequestError, match="top_p"):
        few_shot.run(question="x", backend=backend, top_p=2.0)


def test_run_batch_reports_the_failed_item_and_keeps_the_others(backend):
    items = [{"question": f"q{i}"} for i in range(4)]
    items[2]["top_p"] = 2.0
    states = few_shot.run_batch(items, backend=backend)
    assert isinstance(states[2].error, rl.RequestError) and "top_p" in str(states[2].error)
    for i in (0, 1, 3):
        assert states[i].error is None and isinstance(states[i]["answer"], str)


def _constrained(state_fn):
    try:
        return state_fn()
    except rl.ConstrainedDecodingUnsupported as e:
        pytest.skip(f"the backend has no constrained decoding yet: {e}")


@rl.function
def typed(s):
    s += "Pick a number: " + rl.gen("code", regex=r"[0-9]{3}", max_tokens=8, temperature=0)
    s += "\nCount: " + rl.gen("n", dtype=int, max_tokens=6)
    s += "\nTrue? " + rl.gen("flag", dtype=bool, max_tokens=8)


def test_regex_and_dtype_constrained_gen(backend):
    state = _constrained(lambda: typed.run(backend=backend))
    assert re.fullmatch(r"[0-9]{3}", state["code"])
    assert isinstance(state["n"], int) and isinstance(state["flag"], bool)


def test_json_schema_gen(backend):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}},
              "required": ["name"], "additionalProperties": False}  # fmt: skip

    @rl.function
    def person(s):
        s += "A person as JSON: " + rl.gen("person", json_schema=schema, max_tokens=40)

    state = _constrained(lambda: person.run(backend=backend))
    assert set(state["person"]) == {"name"} and isinstance(state["person"]["name"], str)


def test_engine_and_server_render_and_score_alike(lang_engine, lang_server):
    engine = rl.EngineBackend(lang_engine, record_requests=True)
    http = rl.RuntimeEndpoint(lang_server, record_requests=True)
    assert engine.chat_template == http.chat_template
    for be in (engine, http):
        flush(be)
    a = pick_colour.run(backend=engine)
    b = pick_colour.run(backend=http)
    assert a["colour"] == b["colour"]
    assert a.get_meta_info("colour")["scores"] == pytest.approx(
        b.get_meta_info("colour")["scores"], abs=1e-3
    )
    prompts = lambda be: [(r.kind, r.prompt, r.prompt_tokens) for r in be.usage.records]  # noqa: E731
    assert prompts(engine) == prompts(http)
    http.close()
