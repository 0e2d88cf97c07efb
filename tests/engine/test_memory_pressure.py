"""Scenarios under a deliberately tiny KV pool: every request ends as asked, nothing leaks."""

from __future__ import annotations

import random
import threading

import pytest
from helpers.engine_checks import assert_clean

GREEDY = {"temperature": 0, "max_new_tokens": 40, "ignore_eos": True}


def grouped_prompts(seed: int, groups: int, per_group: int, prefix: int, suffix: int):
    rng = random.Random(seed)
    out = []
    for _ in range(groups):
        head = [rng.randrange(3, 384) for _ in range(prefix)]
        out += [head + [rng.randrange(3, 384) for _ in range(suffix)] for _ in range(per_group)]
    rng.shuffle(out)
    return out


def test_tiny_pool_retracts_and_requeues_yet_outputs_match(engine_factory):
    prompts = grouped_prompts(seed=4, groups=3, per_group=8, prefix=30, suffix=12)
    roomy = engine_factory("llama")
    tight = engine_factory("llama", max_total_tokens=320, chunked_prefill_size=32)
    want = [o["output_ids"] for o in roomy.generate(input_ids=prompts, sampling_params=GREEDY)]
    got = tight.generate(input_ids=prompts, sampling_params=GREEDY)
    assert [o["output_ids"] for o in got] == want
    assert all(o["meta_info"]["finish_reason"] == {"type": "length", "length": 40} for o in got)
    assert tight.get_stats()["retractions"] > 0, "the scenario must exercise retraction"
    assert_clean(tight)
    assert_clean(roomy)


def test_abort_mid_decode_and_in_queue(engine_factory):
    eng = engine_factory("llama", max_total_tokens=400, max_running_requests=2)
    long = {"temperature": 0, "max_new_tokens": 300, "ignore_eos": True}
    stream = eng.generate_stream(input_ids=list(range(5, 25)), sampling_params=long, rid="s")
    results = {}

    def run_queued() -> None:
        results["q"] = eng.generate(
            input_ids=[list(range(30, 40)), list(range(40, 50))],
            sampling_params=long,
            rid=["q1", "q2"],
        )

    t = threading.Thread(target=run_queued)
    t.start()
    for i, chunk in enumerate(stream):
        if i == 3:
            eng.abort("s")
            eng.abort("q2")
        if chunk["finished"]:
            final = chunk
            break
    t.join(timeout=120)
    assert final["meta_info"]["finish_reason"]["type"] == "abort"
    assert final["meta_info"]["completion_tokens"] < 300
    q1, q2 = results["q"]
    assert q1["meta_info"]["finish_reason"]["type"] == "length"
    assert q2["meta_info"]["finish_reason"]["type"] == "abort"
    assert_clean(eng)


def test_breaking_out_of_a_stream_aborts_it(engine_factory):
    eng = engine_factory("qwen2")
    params = {"temperature": 0, "max_new_tokens": 200, "ignore_eos": True}
    for i, _ in enumerate(eng.generate_stream(input_ids=[5, 6, 7], sampling_params=params)):
        if i == 2:
            break
    assert_clean(eng)


def test_request_that_can_never_fit_is_rejected_clearly(engine_factory):
    eng = engine_factory("llama", max_total_tokens=100)
    with pytest.raises(ValueError, match="exceeds the limit of 100 tokens"):
        eng.generate(input_ids=list(range(3, 80)), sampling_params={"max_new_tokens": 30})
    # The engine keeps serving.
    ok = eng.generate(input_ids=[5, 6, 7], sampling_params={"max_new_tokens": 3})
    assert ok["meta_info"]["completion_tokens"] == 3
    assert_clean(eng)


def test_many_concurrent_callers_share_prefixes(engine_factory):
    eng = engine_factory("smollm2", max_total_tokens=600)
    prompts = grouped_prompts(seed=5, groups=2, per_group=10, prefix=40, suffix=6)
    outs: list = [None] * len(prompts)

    def call(i: int) -> None:
        outs[i] = eng.generate(input_ids=prompts[i], sampling_params=GREEDY)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(o is not None and o["meta_info"]["completion_tokens"] == 40 for o in outs)
    assert sum(o["meta_info"]["cached_tokens"] for o in outs) >= 16 * 39
    assert_clean(eng)


def test_a_cached_slot_holding_another_tokens_kv_fails_the_check(engine_factory):
    """The slot accounting cannot see two cached slots swapped (the same slots, in the
    wrong places); the slot ledger can: the check names the slots that hold K/V of
    another token or position."""
    eng = engine_factory("llama")
    prompt = list(range(5, 45))
    eng.generate(input_ids=prompt, sampling_params={**GREEDY, "max_new_tokens": 2})
    assert_clean(eng)
    node = next(iter(eng.scheduler.kv.cache.root.children.values()))
    assert node.value.numel() >= 2
    node.value[[0, 1]] = node.value[[1, 0]].clone()  # positions 0 and 1 trade slots
    with pytest.raises(Exception, match="2 cached slots hold K/V written for another token"):
        eng.check_integrity()
    node.value[[0, 1]] = node.value[[1, 0]].clone()
    assert_clean(eng)
