"""The doctor's parts on their own: alignment, classification, order, reuse, replay, report."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
from doctor.doctor_workloads import story_prompts

from radixlm.config import SchedulerConfig
from radixlm.doctor.align import Diff, diff_spans
from radixlm.doctor.capacity import reuse_distances
from radixlm.doctor.classify import classify, looks_like_counter
from radixlm.doctor.order import analyze_order, canonical
from radixlm.doctor.replay import Replay
from radixlm.doctor.report import diagnose
from radixlm.doctor.spans import Prompt
from radixlm.doctor.units import IdTable, ReplayRequest
from radixlm.kvcache.radix_cache import common_prefix_len
from radixlm.trace.reader import Trace
from radixlm.trace.record import TraceRecord, page_hashes
from radixlm.trace.writer import header_for


@pytest.fixture(scope="module")
def tok(tiny_model_factory):
    from radixlm.tokenizer import load_tokenizer

    return load_tokenizer(tiny_model_factory("llama"))


def test_diff_spans_finds_each_stretch_and_what_follows_it():
    a = [*range(100), 1000, 1001, *range(200, 300), 5000, *range(400, 450)]
    b = [*range(100), 2000, *range(200, 300), 6000, 6001, 6002, *range(400, 450)]
    al = diff_spans(a, b)
    assert al.diverge == 100
    assert al.spans == (Diff(100, 102, 100, 101), Diff(202, 203, 201, 204))
    assert al.runs == (100, 50) and al.shared_after == 150
    assert diff_spans(a, a[:50] + [7] * 10).runs == (0,)  # never back in step


@pytest.mark.parametrize(("text", "value", "kind"), [
    ("Now: 2026-12-02 20:42:28 UTC. Hello", "2026-12-02 20:42:28 UTC", "timestamp"),
    ("The date is 2024-05-17 today", "2024-05-17", "date"),
    ("It is 09:30 now", "09:30", "time"),
    ("Request id: 3f2c9bf9c63a done", "3f2c9bf9c63a", "id"),
    ("Hello Paris, how are you", "Paris", "name"),
])  # fmt: skip
def test_classify_names_the_whole_value(tok, text, value, kind):
    ids = tok.encode(text)
    start = text.index(value) + len(value) - 1  # only the value's last character differs
    lo = len(tok.encode(text[:start])) - 1
    span = classify(tok, ids, max(lo, 0), min(lo + 1, len(ids)))
    assert span.kind == kind and value in span.value
    assert value in tok.decode_raw(ids[span.lo : span.hi])


def test_counters_go_up():
    assert looks_like_counter(["1", "2", "3", "5", "8"])
    assert not looks_like_counter(["5", "1", "9", "2"])


def test_spans_in_the_story_have_kinds_positions_and_costs(tok):
    prompts = story_prompts(20, seed=0, fixed=False)
    recs = [TraceRecord(t=i, step=i, tenant=None, prompt_len=len(ids), cached=0, output_len=1,
                        max_new_tokens=1, finish="length", prompt=ids, output=[9])
            for i, ids in enumerate(tok.encode(p) for p in prompts)]  # fmt: skip
    trace = Trace(header_for("m", 100000, 512, SchedulerConfig(), False, 1), recs)
    rep = diagnose(trace, tok)
    kinds = [g["kind"] for g in sorted(rep["dynamic"], key=lambda g: g["position"])]
    assert kinds == ["timestamp", "id"]
    assert all(g["requests"] == 20 and g["tokens"] > 20 * 150 for g in rep["dynamic"])
    advice = rep["advice"][0]
    assert advice["kind"] == "dynamic" and advice["after"] > 0.5 > rep["hit_rates"]["replay"]


def test_the_doctor_works_on_page_hashes_without_text(tok):
    ids = [tok.encode(p) for p in story_prompts(12, seed=1, fixed=True)]
    recs = [TraceRecord(t=i, step=i * 3, tenant=None, prompt_len=len(x), cached=0, output_len=1,
                        max_new_tokens=1, finish="length", pages=[int(h, 16) >> 1
                        for h in page_hashes(x, 16)]) for i, x in enumerate(ids)]  # fmt: skip
    trace = Trace(header_for("m", 100000, 512, SchedulerConfig(), True, 16), recs)
    rep = diagnose(trace, tok)
    assert rep["trace"]["hashed"] and not rep["trace"]["text"]
    tokens = [TraceRecord(**{**dataclasses.asdict(r), "pages": None, "prompt": x, "output": [9]})
              for r, x in zip(recs, ids, strict=True)]  # fmt: skip
    exact = diagnose(Trace(header_for("m", 100000, 512, SchedulerConfig(), False, 1), tokens))
    # Pages round each hit down to whole pages: within a page per request of the exact rate.
    gap = exact["hit_rates"]["replay"] - rep["hit_rates"]["replay"]
    assert 0 <= gap <= 16 * 12 / sum(len(x) for x in ids)


def test_scrambled_parts_are_found_and_put_in_one_order():
    rng = random.Random(0)
    docs = [[rng.randrange(1000, 9000) for _ in range(60)] for _ in range(3)]
    head = list(range(1, 21))
    prompts = []
    for i in range(12):
        order = rng.sample(range(3), 3)
        units = head + [d for k in order for d in [*docs[k], 7, 7]] + [20000 + i, 9]
        prompts.append(Prompt(i, None, units))
    a = analyze_order(prompts, None)
    assert len(a.parts) == 3 and a.swapped and a.scrambled_prompts >= 6
    fixed = [canonical(p.units, a.layout[p.index], a.parts) for p in prompts]
    assert all(sorted(f) == sorted(p.units) for f, p in zip(fixed, prompts, strict=True))
    assert min(common_prefix_len(tuple(fixed[0]), tuple(f)) for f in fixed[1:]) >= 20 + 3 * 62 - 4


def test_reuse_distance_counts_tokens_computed_in_between():
    a, b, c = [1] * 50 + [2], [3] * 50 + [4], [1] * 50 + [5]
    reqs = [ReplayRequest(i, i, None, k, [], 0, len(k)) for i, k in enumerate((a, b, c))]
    r = reuse_distances(reqs)
    assert r.reusable_tokens == 50 and r.distances == [(51, 50)]  # b's 51 tokens came between
    assert r.within(51) == 50 and r.within(50) == 0 and r.oracle == pytest.approx(50 / 153)


def _workload(n: int, seed: int) -> list[ReplayRequest]:
    rng = random.Random(seed)
    heads = [[rng.randrange(10, 900) for _ in range(rng.randrange(40, 120))] for _ in range(5)]
    out = []
    for i in range(n):
        key = rng.choice(heads) + [rng.randrange(10, 900) for _ in range(rng.randrange(1, 30))]
        outs = [rng.randrange(10, 900) for _ in range(rng.randrange(1, 12))]
        out.append(ReplayRequest(i, i * rng.randrange(0, 4), rng.choice(["a", "b"]), key, outs,
                                 len(outs) + rng.randrange(0, 4), len(key)))  # fmt: skip
    return out


@pytest.mark.parametrize("policy", ["lpm", "fcfs", "dfs-weight"])
def test_decode_jumps_change_nothing(policy):
    reqs = _workload(150, seed=3)
    cfg = SchedulerConfig(schedule_policy=policy, max_running_requests=6)
    fast = Replay(reqs, 600, cfg, 4096).run()
    slow = Replay(reqs, 600, cfg, 4096, jumps=False).run()
    assert fast.cached == slow.cached and fast.steps == slow.steps
    assert fast.evicted == slow.evicted and sum(fast.evicted.values()) > 0
    big = Replay(reqs, 100000, cfg, 4096).run()
    assert big.hit_rate >= fast.hit_rate and not big.evicted


def _naive_reuse(reqs: list[ReplayRequest]) -> list[tuple[int, int]]:
    """Reuse distances over a per-token trie (each node: children, clock of last use)."""
    roots: dict = {}
    clock, out = 0, []
    for rr in reqs:
        node = roots.setdefault(rr.tenant, [{}, 0])
        depth, last = 0, 0
        while depth < len(rr.key) - 1 and rr.key[depth] in node[0]:
            node = node[0][rr.key[depth]]
            depth, last = depth + 1, node[1]
        if depth:
            out.append((clock - last, depth))
        clock += len(rr.key) - depth + len(rr.output)
        node = roots[rr.tenant]
        for tok in (*rr.key, *rr.output):
            node = node[0].setdefault(tok, [{}, clock])
            node[1] = clock
    return sorted(out)


def test_reuse_distances_match_a_per_token_trie():
    reqs = sorted(_workload(200, seed=7), key=lambda r: (r.step, r.index))
    assert reuse_distances(reqs).distances == _naive_reuse(reqs)


def test_id_table_shares_one_object_per_value_and_keeps_every_list_equal():
    table = IdTable(size=8)  # every id below is outside it at first: the table grows
    a = json.loads("[1000, 1001, 70000, -3000, 1001]")  # parsed, as a trace: new ints
    b = json.loads("[1001, 70000, -3000]")
    assert a[1] is not b[0]
    sa, sb = table.shared(a), table.shared(b)
    assert sa == a and sb == b
    assert sa[1] is sb[0] and sa[2] is sb[1] and sa[3] is sb[2]  # one object per value
    assert sa[1] is sa[4]
    huge = [1 << 40, 2]  # beyond what the table grows to: the list is kept as it is
    assert table.shared(huge) is huge
    assert table.shared([9]) == [9] and table.shared([]) == []
