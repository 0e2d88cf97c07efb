"""Phi-3's LongRoPE across its switch (32 tokens in the tiny model) against transformers.

transformers picks the long factors for a forward whose sequence ends past the
original context, and keeps the keys already cached as they were; radixlm
does the same, per sequence. docs/models.md explains what this means for a
prefix in the radix cache.
"""

from __future__ import annotations

import torch
from family_checks import TOL, dense_steps, load_pair, ref_incremental_logits, ref_logits
from helpers.reference import full_logits, tokens
from test_paged_model import paged_forward, scattered_pool

import radixlm

SWITCH = 32


def test_a_prompt_past_the_switch_uses_the_long_factors(tiny_model_factory):
    ours, ref = load_pair(tiny_model_factory("phi3"))
    assert ours.config.rope_scaling is not None
    assert ours.config.rope_scaling.original_max_position_embeddings == SWITCH
    ids = tokens(40, seed=1, vocab=ours.config.vocab_size)
    expected = ref_logits(ref, ids)
    assert (full_logits(ours, ids) - expected).abs().max().item() <= TOL
    # the short factors alone would not match: the switch matters for this prompt
    assert (full_logits(ours, ids)[:30] - ref_logits(ref, ids[:30])).abs().max().item() > 1e-3


def test_decoding_across_the_switch_matches_transformers_cache(tiny_model_factory):
    ours, ref = load_pair(tiny_model_factory("phi3"))
    ids = tokens(40, seed=2, vocab=ours.config.vocab_size)
    expected = ref_incremental_logits(ref, ids, prefill=20)
    assert (dense_steps(ours, ids, prefill=20) - expected).abs().max().item() <= TOL


def test_a_prefix_cached_under_the_switch_is_reused_as_computed(tiny_model_factory):
    """A 20-token prefix (short factors) extended to 40 tokens (long factors for the new
    ones): transformers gives the same when it extends its own cache by those 20 tokens."""
    ours, ref = load_pair(tiny_model_factory("phi3"))
    ids = tokens(40, seed=3, vocab=ours.config.vocab_size)
    pool = scattered_pool(ours)
    slots = pool.alloc(40)
    paged_forward(ours, pool, [slots[:20]], [0], [ids[:20]])
    got = paged_forward(ours, pool, [slots], [20], [ids[20:]])
    with torch.no_grad():
        out = ref(torch.tensor([ids[:20]]), use_cache=True)
        out = ref(torch.tensor([ids[20:]]), cache=out.past_key_values, use_cache=True)
    assert (got - out.logits[0]).abs().max().item() <= TOL
    # recomputing all 40 tokens (long factors for the prefix too) gives other logits
    assert (got - full_logits(ours, ids)[20:]).abs().max().item() > 1e-3


def test_engine_generation_across_the_switch_equals_transformers_generate(tiny_model_factory):
    """A 26-token prompt generating 14 tokens crosses the switch while decoding."""
    path = tiny_model_factory("phi3")
    _, ref = load_pair(path)
    prompt = tokens(26, seed=4, vocab=ref.config.vocab_size)
    params = {"temperature": 0, "max_new_tokens": 14, "ignore_eos": True}
    with radixlm.Engine(model=str(path), dtype="float32", max_total_tokens=1024) as eng:
        got = eng.generate(input_ids=prompt, sampling_params=params)["output_ids"]
    with torch.no_grad():
        out = ref.generate(torch.tensor([prompt]), max_new_tokens=14, min_new_tokens=14,
                           do_sample=False, pad_token_id=0)  # fmt: skip
    assert got == out[0, len(prompt) :].tolist()
