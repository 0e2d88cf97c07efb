"""The first promise: cached and uncached runs give the same greedy tokens (and match HF)."""

from __future__ import annotations

import random

import pytest
import torch
from helpers.engine_checks import assert_clean
from transformers import AutoModelForCausalLM

GREEDY = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}


def shared_prefix_batch(seed: int, n: int = 32, vocab: int = 384) -> list[list[int]]:
    """Prompts sharing prefixes at different depths: a trunk, branches, twigs, and loners."""
    rng = random.Random(seed)
    tok = lambda k: [rng.randrange(3, vocab) for _ in range(k)]  # noqa: E731
    trunk = tok(40)
    branches = [trunk + tok(rng.randrange(5, 30)) for _ in range(4)]
    prompts = []
    for i in range(n):
        kind = i % 4
        if kind == 3:
            prompts.append(tok(rng.randrange(5, 60)))  # shares nothing
        else:
            base = branches[i % len(branches)] if kind else trunk
            prompts.append(base + tok(rng.randrange(1, 20)))
    rng.shuffle(prompts)
    return prompts


@pytest.mark.parametrize("variant", ["llama", "qwen2", "smollm2"])
def test_radix_on_and_off_give_identical_greedy_tokens(engine_factory, variant):
    prompts = shared_prefix_batch(seed=1)
    on = engine_factory(variant)
    off = engine_factory(variant, disable_radix_cache=True)
    # Warm the tree so the batch meets prefixes cached by an earlier call too.
    on.generate(input_ids=prompts[:5], sampling_params=GREEDY)
    a = on.generate(input_ids=prompts, sampling_params=GREEDY)
    b = off.generate(input_ids=prompts, sampling_params=GREEDY)
    assert [x["output_ids"] for x in a] == [x["output_ids"] for x in b]
    assert sum(x["meta_info"]["cached_tokens"] for x in a) > 0
    assert all(x["meta_info"]["cached_tokens"] == 0 for x in b)
    assert_clean(on)
    assert_clean(off)


def test_greedy_matches_transformers_generate(engine_factory, tiny_model_factory):
    eng = engine_factory("llama")
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama"), dtype=torch.float32)
    prompts = shared_prefix_batch(seed=2, n=6)
    outs = eng.generate(input_ids=prompts, sampling_params=GREEDY)
    for prompt, out in zip(prompts, outs, strict=True):
        with torch.no_grad():
            want = ref.generate(
                torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                pad_token_id=0,
            )[0, len(prompt) :].tolist()  # fmt: skip
        assert out["output_ids"] == want


def test_fully_cached_prompt_gives_right_first_token_and_exact_cached_tokens(engine_factory):
    eng = engine_factory("llama")
    prompt = list(range(10, 60))
    first = eng.generate(input_ids=prompt, sampling_params=GREEDY)
    again = eng.generate(input_ids=prompt, sampling_params=GREEDY)
    assert first["meta_info"]["cached_tokens"] == 0
    assert again["meta_info"]["cached_tokens"] == len(prompt) - 1
    assert again["output_ids"] == first["output_ids"]
    # A prompt that extends a cached prompt+output reuses all of it.
    longer = prompt + first["output_ids"]
    ext = eng.generate(input_ids=longer, sampling_params=GREEDY)
    assert ext["meta_info"]["cached_tokens"] >= len(prompt) + len(first["output_ids"]) - 2
    assert_clean(eng)


def test_chunked_prefill_matches_unchunked(engine_factory):
    prompts = shared_prefix_batch(seed=3, n=8)
    prompts.append(list(range(3, 300)))  # long: many chunks
    chunked = engine_factory("llama", chunked_prefill_size=16, max_prefill_tokens=40)
    whole = engine_factory("llama", disable_radix_cache=True, chunked_prefill_size=0)
    a = chunked.generate(input_ids=prompts, sampling_params=GREEDY)
    b = whole.generate(input_ids=prompts, sampling_params=GREEDY)
    assert [x["output_ids"] for x in a] == [x["output_ids"] for x in b]
    assert_clean(chunked)


def test_flush_cache_forgets_prefixes(engine_factory):
    eng = engine_factory("llama")
    prompt = list(range(100, 140))
    eng.generate(input_ids=prompt, sampling_params=GREEDY)
    assert eng.flush_cache() is True
    assert eng.get_stats()["cached_tree_tokens"] == 0
    again = eng.generate(input_ids=prompt, sampling_params=GREEDY)
    assert again["meta_info"]["cached_tokens"] == 0
    assert_clean(eng)


def test_text_prompts_streaming_and_async_agree(engine_factory):
    import asyncio

    eng = engine_factory("smollm2")
    params = {"temperature": 0, "max_new_tokens": 10, "ignore_eos": True}
    whole = eng.generate("hello there", params)
    chunks = list(eng.generate_stream("hello there", params))
    assert "".join(c["text_delta"] for c in chunks) == whole["text"] == chunks[-1]["text"]
    assert [t for c in chunks for t in c["output_ids"]] == whole["output_ids"]
    assert chunks[-1]["finished"] and chunks[-1]["meta_info"]["finish_reason"]["type"] == "length"

    async def collect() -> str:
        text = ""
        async for c in eng.async_generate_stream("hello there", params):
            text += c["text_delta"]
        res = await eng.async_generate("hello there", params)
        assert res["text"] == text
        return text

    assert asyncio.run(collect()) == whole["text"]
    assert_clean(eng)


def test_bad_options_name_the_field(engine_factory):
    from radixlm.sampling.params import SamplingParamsError

    eng = engine_factory("llama")
    with pytest.raises(SamplingParamsError, match="temperature"):
        eng.generate(input_ids=[1, 2], sampling_params={"temperature": -1})
    with pytest.raises(SamplingParamsError, match="stop_token_ids"):
        eng.generate(input_ids=[1, 2], sampling_params={"stop_token_ids": [10**6]})
    with pytest.raises(TypeError, match="bogus"):
        eng.generate(input_ids=[1, 2], bogus=True)
    with pytest.raises(ValueError, match="empty"):
        eng.generate(input_ids=[], sampling_params={})
    with pytest.raises(ValueError, match=r"regex: .*parenthesis"):
        eng.generate(input_ids=[1, 2], sampling_params={"regex": "([0-9]+"})
    with pytest.raises(TypeError, match="unknown engine option"):
        type(eng)(model="x", not_an_option=1)
    assert eng.generate(input_ids=[1, 2], sampling_params=GREEDY)["meta_info"]["completion_tokens"]
    assert_clean(eng)
