"""Every non-Llama family against transformers, and through the radix cache (float32).

Families: Qwen3, Gemma 2, Gemma 3, Phi-3, Mixtral, Qwen2-MoE, Qwen3-MoE, and
Mistral/Qwen2 with sliding windows. The sliding-window variants have a window
of 8 tokens, shorter than every long prompt here, and their prefixes are
cached by shorter requests and reused by longer ones.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from family_checks import (
    TOL,
    dense_steps,
    load_pair,
    ref_logits,
    shared_prefix_prompts,
)
from helpers.engine_checks import assert_clean
from helpers.reference import full_logits, tokens
from helpers.tiny_models import FAMILY_VARIANTS, WINDOW
from test_paged_model import paged_forward, scattered_pool

import radixlm
from radixlm.kvcache.radix_cache import RadixCache
from radixlm.loader import LoadedModel
from radixlm.models.llama import LlamaForCausalLM

FAMILIES = sorted(FAMILY_VARIANTS)
# Phi-3's LongRoPE switches factors past 32 tokens; its prompts stay under the switch here
# (tests/model/test_phi3_longrope.py crosses it).
MAX_LEN = {"phi3": 22}
GREEDY = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tiny_model_factory):
    path = tiny_model_factory(request.param)
    return (request.param, path, *load_pair(path))


def test_full_prompt_and_token_by_token_match_transformers(family):
    variant, _, ours, ref = family
    ids = tokens(MAX_LEN.get(variant, 40), seed=3, vocab=ours.config.vocab_size)
    expected = ref_logits(ref, ids)
    assert (full_logits(ours, ids) - expected).abs().max().item() <= TOL
    assert (dense_steps(ours, ids, prefill=5) - expected).abs().max().item() <= TOL


def test_extend_over_a_cached_prefix_longer_than_the_window(family):
    variant, _, ours, _ = family
    n = MAX_LEN.get(variant, 40)
    ids = tokens(n, seed=4, vocab=ours.config.vocab_size)
    expected = full_logits(ours, ids)
    pool = scattered_pool(ours)
    slots = pool.alloc(n)
    for p in (3, WINDOW + 5):  # prefixes cached by a shorter request, extended by a longer one
        paged_forward(ours, pool, [slots[:p]], [0], [ids[:p]])
        got = paged_forward(ours, pool, [slots], [p], [ids[p:]])
        assert (got - expected[p:]).abs().max().item() <= TOL


def test_shared_prefix_batch_and_decode_through_the_pool(family):
    _, _, ours, _ = family
    vocab = ours.config.vocab_size
    trunk = tokens(14, seed=5, vocab=vocab)
    reqs = [trunk + tokens(k, seed=6 + k, vocab=vocab) for k in (1, 4, 6)]
    pool = scattered_pool(ours)
    cache = RadixCache(pool)
    first = pool.alloc(len(trunk))
    paged_forward(ours, pool, [first], [0], [trunk])
    cache.insert(trunk, first)
    seq_slots, nodes = [], []
    for key in reqs:
        m = cache.match_prefix(key)
        cache.inc_lock_ref(m.last_node)
        nodes.append(m.last_node)
        seq_slots.append(torch.cat([m.slot_indices, pool.alloc(len(key) - m.prefix_len)]))
    got = paged_forward(ours, pool, seq_slots, [14] * 3, [k[14:] for k in reqs])
    at = 0
    for key in reqs:
        assert (got[at : at + len(key) - 14] - full_logits(ours, key)[14:]).abs().max() <= TOL
        at += len(key) - 14
    # then three decode steps of the whole batch (the native decode kernel where present)
    seqs = [list(k) for k in reqs]
    for step in range(3):
        new = tokens(3, seed=50 + step, vocab=vocab)
        lens = [len(s) for s in seqs]
        seq_slots = [torch.cat([s, pool.alloc(1)]) for s in seq_slots]
        got = paged_forward(ours, pool, seq_slots, lens, [[t] for t in new])
        for row, (seq, t) in enumerate(zip(seqs, new, strict=True)):
            seq.append(t)
            assert (got[row] - full_logits(ours, seq)[-1]).abs().max().item() <= TOL
    for node in nodes:
        cache.dec_lock_ref(node)


def test_radix_cache_on_and_off_give_identical_greedy_tokens(family):
    variant, path, _, ref = family
    limit = MAX_LEN.get(variant, 64)
    prompts = [p[:limit] for p in shared_prefix_prompts(seed=7)]
    on = radixlm.Engine(model=str(path), dtype="float32", max_total_tokens=4096, debug=True)
    off = radixlm.Engine(model=str(path), dtype="float32", max_total_tokens=4096,
                         disable_radix_cache=True)  # fmt: skip
    try:
        # shorter requests cache a prefix of the trunk first; the batch's longer ones reuse it
        on.generate(input_ids=[p[:10] for p in prompts[:3]], sampling_params=GREEDY)
        a = on.generate(input_ids=prompts, sampling_params=GREEDY)
        b = off.generate(input_ids=prompts, sampling_params=GREEDY)
        assert [x["output_ids"] for x in a] == [x["output_ids"] for x in b]
        assert sum(x["meta_info"]["cached_tokens"] for x in a) > 0
        # and the engine's greedy tokens are transformers' for the longest prompt
        longest = max(prompts, key=len)
        with torch.no_grad():
            out = ref.generate(torch.tensor([longest]), max_new_tokens=8, min_new_tokens=8,
                               do_sample=False, pad_token_id=0)  # fmt: skip
        want = out[0, len(longest) :].tolist()
        assert a[prompts.index(longest)]["output_ids"] == want
        assert_clean(on)
        assert_clean(off)
    finally:
        on.shutdown()
        off.shutdown()


@pytest.mark.parametrize("variant", ["mistral_swa", "gemma2", "gemma3"])
def test_the_window_changes_the_logits(tiny_model_factory, variant):
    """The comparisons above would catch a window that was ignored: without it the logits
    of a prompt longer than the window are far from transformers'."""
    ours, ref = load_pair(tiny_model_factory(variant))
    ids = tokens(30, seed=8, vocab=ours.config.vocab_size)
    unwindowed = dataclasses.replace(ours.config, sliding_window=None)
    model = LlamaForCausalLM(unwindowed)
    model.load_state_dict(ours.model.state_dict())
    model.eval()
    plain = LoadedModel(model=model, config=unwindowed, path=ours.path, dtype=ours.dtype,
                        device=ours.device)  # fmt: skip
    assert (full_logits(plain, ids) - ref_logits(ref, ids)).abs().max().item() > 100 * TOL
