"""Workload generators: exact token counts, structure, determinism, and the oracle by hand."""

from __future__ import annotations

import pytest

from radixlm.bench.oracle import OracleCache, oracle_hit_rate, replay, reusable_tokens
from radixlm.bench.vocab import WordVocab, word_vocab
from radixlm.bench.workload import prompt_ids, resolve_offline
from radixlm.bench.workloads import WORKLOADS, build_workload

BIG = WordVocab(tuple(range(10_000, 110_000)))  # large enough that random runs never collide


def prompts(name: str, answer_len: int = 0, seed: int = 0, **params: int) -> list[list[int]]:
    w = build_workload(name, BIG, seed, params)
    return resolve_offline(w, lambda r: [7] * answer_len)


def test_oracle_by_hand():
    seqs = [[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4], [9], [1, 2, 9, 9, 9]]
    # 2nd shares 3 with the 1st; the 3rd repeats the 1st but its last token is computed;
    # [9] has one token (always computed); the 5th shares [1, 2].
    assert reusable_tokens(seqs) == [0, 3, 3, 0, 2]
    assert oracle_hit_rate(seqs) == pytest.approx(8 / 18)
    assert oracle_hit_rate([]) == 0.0


def test_oracle_replay_counts_answers_of_finished_requests():
    events = [
        ("send", 0, [1, 2, 3]),
        ("send", 1, [1, 2, 8, 8]),  # request 0 has not answered yet: only its prompt counts
        ("done", 0, [1, 2, 3, 50, 51]),  # prompt + answer (less its last token)
        ("send", 2, [1, 2, 3, 50, 51, 52, 9]),
    ]
    assert replay(events) == {0: 0, 1: 2, 2: 5}
    cache = OracleCache()
    cache.insert([4, 5])
    assert (cache.match([4, 5, 6]), cache.match([4, 5]), cache.match([5])) == (2, 1, 0)


def test_shared_prefix_counts_and_oracle():
    g, p, s, q, o = 3, 4, 40, 6, 5
    w = build_workload(
        "shared-prefix",
        BIG,
        0,
        {"groups": g, "prompts_per_group": p, "system_len": s, "question_len": q, "output_len": o},
    )
    assert len(w.requests) == g * p and all(r.output_len == o for r in w.requests)
    ps = [prompt_ids(r.parts) for r in w.requests]
    assert all(len(x) == s + q for x in ps)
    systems = [tuple(x[:s]) for x in ps]
    assert len(set(systems)) == g and all(systems.count(sy) == p for sy in set(systems))
    assert len({tuple(x[s:]) for x in ps}) == g * p  # every question differs
    assert systems[:p] != [systems[0]] * p  # groups interleave in arrival order
    assert oracle_hit_rate(ps) == pytest.approx(g * (p - 1) * s / (g * p * (s + q)))


def test_multi_turn_appends_the_answer_and_a_new_message():
    c, t, s, u, a = 2, 3, 10, 4, 3
    w = build_workload(
        "multi-turn",
        BIG,
        0,
        {"conversations": c, "turns": t, "system_len": s, "user_len": u, "output_len": a},
    )
    ps = resolve_offline(w, lambda r: [7] * a)
    assert [r.parent for r in w.requests] == [None, None, 0, 1, 2, 3]
    for r in w.requests:
        turn = r.index // c
        assert len(ps[r.index]) == s + u + turn * (a + u)
        if r.parent is not None:
            assert ps[r.index][: len(ps[r.parent]) + a] == ps[r.parent] + [7] * a
            assert [p.role for p in r.parts] == ["user"]
    # the answers are reusable once their request finished: oracle from the event log
    events = []
    for r in w.requests:
        events += [("send", r.index, ps[r.index]), ("done", r.index, ps[r.index] + [7] * (a - 1))]
    reuse = replay(events)
    assert [reuse[i] for i in range(2, 6)] == [len(ps[i - 2]) + a - 1 for i in range(2, 6)]


def test_few_shot_shares_the_whole_bank():
    w = build_workload(
        "few-shot",
        BIG,
        0,
        {"requests": 5, "examples": 3, "example_len": 10, "instruction_len": 4, "question_len": 6},
    )
    ps = [prompt_ids(r.parts) for r in w.requests]
    bank = 4 + 3 * 10
    assert all(len(x) == bank + 6 and x[:bank] == ps[0][:bank] for x in ps)
    assert oracle_hit_rate(ps) == pytest.approx(4 * bank / (5 * (bank + 6)))


def test_rag_interleaves_documents_and_scrambled_collapses_the_hit_rate():
    params = {
        "documents": 3,
        "questions_per_doc": 4,
        "system_len": 20,
        "doc_len": 50,
        "question_len": 5,
        "tools_len": 15,
    }
    rag = build_workload("rag", BIG, 0, params)
    ps = [prompt_ids(r.parts) for r in rag.requests]
    assert all(len(x) == 20 + 15 + 50 + 5 for x in ps)
    docs = [tuple(x[35:85]) for x in ps]
    assert docs[:3] == docs[3:6] and len(set(docs[:3])) == 3  # d0 d1 d2 d0 d1 d2 ...
    scr = build_workload("scrambled", BIG, 0, params)
    sps = [prompt_ids(r.parts) for r in scr.requests]
    assert sorted(map(len, sps)) == sorted(map(len, ps))
    orders = {tuple(p.ids[:1] for p in r.parts[:3]) for r in scr.requests}
    assert len(orders) > 3  # the context parts come in several orders
    assert oracle_hit_rate(sps) < oracle_hit_rate(ps) - 0.15


def test_branching_tree_shape():
    n, root, b, a = 3, 30, 4, 2
    w = build_workload(
        "branching", BIG, 0, {"branches": n, "root_len": root, "branch_len": b, "output_len": a}
    )
    assert len(w.requests) == n + n * n
    assert [r.parent for r in w.requests[n:]] == [i for i in range(n) for _ in range(n)]
    ps = resolve_offline(w, lambda r: [7] * a)
    assert all(len(x) == root + b for x in ps[:n])
    assert all(len(x) == root + b + a + b for x in ps[n:])
    assert all(x[:root] == ps[0][:root] for x in ps)


def test_unique_and_prefix_sweep():
    ps = prompts("unique", requests=6, prompt_len=50)
    assert all(len(x) == 50 for x in ps) and oracle_hit_rate(ps) == 0.0
    sweep = prompts("prefix-sweep", prompt_len=40, steps=4)
    assert len(sweep) == 10 and all(len(x) == 40 for x in sweep)
    shared = reusable_tokens(sweep)
    assert shared[1::2] == [0, 10, 20, 30, 39] and shared[0::2] == [0] * 5


def test_determinism_and_bad_parameters():
    for name in WORKLOADS:
        assert prompts(name, 2, seed=3) == prompts(name, 2, seed=3)
        assert prompts(name, 2, seed=3) != prompts(name, 2, seed=4)
    with pytest.raises(ValueError, match="no parameter 'bogus'"):
        build_workload("unique", BIG, 0, {"bogus": 1})
    with pytest.raises(ValueError, match="unknown workload"):
        build_workload("nope", BIG)
    with pytest.raises(ValueError, match="must be positive"):
        build_workload("unique", BIG, 0, {"prompt_len": 0})


def test_word_vocab_round_trips_through_text(tiny_model_factory):
    from radixlm.tokenizer import load_tokenizer

    hf = load_tokenizer(tiny_model_factory("llama")).hf_tokenizer
    vocab = word_vocab(hf)
    assert len(vocab.ids) >= 16
    ps = [prompt_ids(r.parts) for r in build_workload("rag", vocab, 1).requests]
    for ids in ps:
        assert hf.encode(hf.decode(ids), add_special_tokens=False) == ids
