"""Cache-aware policies beat fcfs on hit rate; sampling options behave end to end."""

from __future__ import annotations

import random

import pytest
import torch
from helpers.engine_checks import assert_clean
from transformers import AutoModelForCausalLM

GREEDY = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}


def two_group_queue(seed: int = 7):
    """A cached group A, and an interleaved queue B, A, B, A, ... of 16 requests."""
    rng = random.Random(seed)
    head_a = [rng.randrange(3, 384) for _ in range(120)]
    head_b = [rng.randrange(3, 384) for _ in range(120)]
    tail = lambda: [rng.randrange(3, 384) for _ in range(4)]  # noqa: E731
    queue = []
    for _ in range(8):
        queue += [head_b + tail(), head_a + tail()]
    return head_a + tail(), queue


@pytest.mark.parametrize("policy", ["lpm", "dfs-weight"])
def test_cache_aware_policy_hits_more_than_fcfs(engine_factory, policy):
    warm, queue = two_group_queue()
    rates = {}
    for name in ("fcfs", policy):
        # The pool holds one group's prefix plus a few running requests, not both prefixes.
        eng = engine_factory(
            "llama", max_total_tokens=220, schedule_policy=name, max_running_requests=2
        )
        eng.generate(input_ids=warm, sampling_params=GREEDY)
        outs = eng.generate(input_ids=queue, sampling_params=GREEDY)
        cached = sum(o["meta_info"]["cached_tokens"] for o in outs)
        rates[name] = cached / sum(len(q) for q in queue)
        assert_clean(eng)
    assert rates[policy] > rates["fcfs"], rates


def test_seeds_reproduce_across_batches(engine_factory):
    eng = engine_factory("llama")
    params = {"temperature": 1.0, "top_p": 0.9, "max_new_tokens": 16, "seed": 11}
    alone = eng.generate(input_ids=[5, 6, 7, 8], sampling_params=params)["output_ids"]
    batch = eng.generate(
        input_ids=[[9, 9, 9], [5, 6, 7, 8], [100, 3]], sampling_params=params
    )  # the same seed in a different batch and row
    assert batch[1]["output_ids"] == alone
    other = eng.generate(input_ids=[5, 6, 7, 8], sampling_params={**params, "seed": 12})
    assert other["output_ids"] != alone


def test_top_k_one_equals_greedy(engine_factory):
    eng = engine_factory("qwen2")
    greedy = eng.generate(input_ids=[4, 5, 6], sampling_params=GREEDY)["output_ids"]
    top1 = {"temperature": 1.3, "top_k": 1, "max_new_tokens": 8, "ignore_eos": True}
    assert eng.generate(input_ids=[4, 5, 6], sampling_params=top1)["output_ids"] == greedy


def test_stop_string_across_token_boundary_is_trimmed(engine_factory):
    eng = engine_factory("smollm2")
    free = eng.generate("The cat sat on", {**GREEDY, "max_new_tokens": 24})
    text = free["text"]
    # Take 3 characters straddling the boundary between the 2nd and 3rd tokens' text.
    tok = eng.tokenizer
    cut = len(tok.decode(free["output_ids"][:2]))
    assert 1 <= cut < len(text) - 2
    stop = text[cut - 1 : cut + 2]
    first = text.index(stop)
    stopped = eng.generate("The cat sat on", {**GREEDY, "max_new_tokens": 24, "stop": stop})
    assert stopped["text"] == text[:first]
    assert stopped["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    kept = eng.generate(
        "The cat sat on", {**GREEDY, "max_new_tokens": 24, "stop": stop, "no_stop_trim": True}
    )
    assert kept["text"] == text[: first + len(stop)]
    assert_clean(eng)


def test_n_samples_share_the_prompt_prefill(engine_factory):
    eng = engine_factory("llama", disable_radix_cache=False)
    prompt = list(range(50, 90))
    outs = eng.generate(
        input_ids=prompt,
        sampling_params={"n": 4, "temperature": 1.0, "max_new_tokens": 6, "seed": 1},
    )
    assert len(outs) == 4
    cached = sorted(o["meta_info"]["cached_tokens"] for o in outs)
    assert cached == [0, 39, 39, 39]  # computed once, reused three times
    assert len({tuple(o["output_ids"]) for o in outs}) > 1  # different seeds, different samples
    assert_clean(eng)


def test_prefill_only_returns_prompt_logprobs(engine_factory, tiny_model_factory):
    eng = engine_factory("llama")
    prompt = [7, 19, 200, 31, 5, 88, 120]
    eng.generate(input_ids=prompt, sampling_params={"max_new_tokens": 0})  # cache it first
    out = eng.generate(
        input_ids=prompt,
        sampling_params={"max_new_tokens": 0},
        return_logprob=True,
        logprob_start_len=2,
        top_logprobs_num=3,
    )
    meta = out["meta_info"]
    assert out["output_ids"] == [] and meta["finish_reason"] == {"type": "length", "length": 0}
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama"), dtype=torch.float32)
    with torch.no_grad():
        logp = torch.log_softmax(ref(torch.tensor([prompt])).logits[0], -1)
    entries = meta["input_token_logprobs"]
    assert [e[1] for e in entries] == prompt[2:]
    for pos, (lp, tid, _) in zip(range(2, len(prompt)), entries, strict=True):
        assert abs(lp - logp[pos - 1, tid].item()) < 1e-4
    tops = meta["input_top_logprobs"]
    assert [t[0] for t in tops[0]] == sorted((t[0] for t in tops[0]), reverse=True)
    assert tops[0][0][1] == int(logp[1].argmax())
    assert_clean(eng)


def test_prompt_logprobs_from_zero_start_with_null(engine_factory):
    eng = engine_factory("llama")
    out = eng.generate(
        input_ids=[7, 8, 9],
        sampling_params={"max_new_tokens": 2, "temperature": 0},
        return_logprob=True,
        logprob_start_len=0,
    )
    entries = out["meta_info"]["input_token_logprobs"]
    assert entries[0] == [None, 7, None] and len(entries) == 3
    assert len(out["meta_info"]["output_token_logprobs"]) == 2
