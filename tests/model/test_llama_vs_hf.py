"""The decoder against transformers on the same tiny random weights (float32)."""

from __future__ import annotations

import pytest
import torch
from helpers.generation import GenerationParams, generate_tokens
from transformers import AutoModelForCausalLM

from radixlm.attention.dense import DenseContext, DenseKVCache
from radixlm.config import LoadConfig
from radixlm.loader import load_model

TOL = 1e-4


def _load_both(model_dir):
    ours = load_model(LoadConfig(model=str(model_dir), dtype="float32"), progress=False)
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return ours, ref


def _forward(model, cache, ids: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(cache.length, cache.length + len(ids))
    ctx = DenseContext([cache], [len(ids)])
    logits = model(ids, positions, ctx)
    ctx.commit()
    return logits


def _ref_logits(ref, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ref(ids.unsqueeze(0)).logits[0].float()


def test_full_prompt_and_token_by_token_match_transformers(tiny_model_dir):
    ours, ref = _load_both(tiny_model_dir)
    torch.manual_seed(1)
    ids = torch.randint(0, ours.config.vocab_size, (48,))
    expected = _ref_logits(ref, ids)

    full = _forward(ours.model, DenseKVCache(ours.config, 64, torch.float32, ours.device), ids)
    assert (full - expected).abs().max().item() <= TOL

    # Prefill 20 tokens, then one token per step through the KV cache.
    cache = DenseKVCache(ours.config, 64, torch.float32, ours.device)
    steps = [_forward(ours.model, cache, ids[:20])]
    steps += [_forward(ours.model, cache, ids[i : i + 1]) for i in range(20, len(ids))]
    assert cache.length == len(ids)
    assert (torch.cat(steps) - expected).abs().max().item() <= TOL


def test_batched_sequences_equal_separate_runs(tiny_model_factory):
    ours, _ = _load_both(tiny_model_factory("qwen2"))
    torch.manual_seed(2)
    a, b = torch.randint(0, 384, (17,)), torch.randint(0, 384, (9,))
    caches = [DenseKVCache(ours.config, 32, torch.float32, ours.device) for _ in range(2)]
    ctx = DenseContext(caches, [17, 9])
    both = ours.model(torch.cat([a, b]), torch.cat([torch.arange(17), torch.arange(9)]), ctx)
    alone_a = _forward(ours.model, DenseKVCache(ours.config, 32, torch.float32, ours.device), a)
    alone_b = _forward(ours.model, DenseKVCache(ours.config, 32, torch.float32, ours.device), b)
    assert torch.allclose(both, torch.cat([alone_a, alone_b]), atol=1e-5)


def test_logits_indices_select_rows(tiny_model_factory):
    ours, _ = _load_both(tiny_model_factory("llama"))
    ids = torch.arange(10)
    full = _forward(ours.model, DenseKVCache(ours.config, 16, torch.float32, ours.device), ids)
    cache = DenseKVCache(ours.config, 16, torch.float32, ours.device)
    picked = ours.model(ids, torch.arange(10), DenseContext([cache], [10]), torch.tensor([3, 9]))
    assert torch.allclose(picked, full[[3, 9]], atol=1e-5)


@pytest.mark.parametrize("variant", ["llama", "smollm2"])
def test_greedy_generation_matches_transformers_generate(tiny_model_factory, variant):
    ours, ref = _load_both(tiny_model_factory(variant))
    prompt = [5, 17, 99, 200, 3, 42]
    params = GenerationParams(max_new_tokens=24, ignore_eos=True)
    got = list(generate_tokens(ours.model, prompt, params))
    with torch.no_grad():
        out = ref.generate(
            torch.tensor([prompt]), max_new_tokens=24, do_sample=False, min_new_tokens=24,
            pad_token_id=0,
        )  # fmt: skip
    assert got == out[0, len(prompt) :].tolist()


def test_generation_stops_at_eos_and_respects_max_new_tokens(tiny_model_factory):
    ours, _ = _load_both(tiny_model_factory("llama"))
    prompt = [5, 17, 99]
    free = list(generate_tokens(ours.model, prompt, GenerationParams(max_new_tokens=12)))
    assert len(free) == 12
    assert list(generate_tokens(ours.model, prompt, GenerationParams(max_new_tokens=0))) == []
    # Declaring the 4th greedy token a stop token ends generation right after it.
    stop = free[3]
    first = free.index(stop)
    stopped = list(generate_tokens(ours.model, prompt, GenerationParams(12), (stop,)))
    assert stopped == free[: first + 1]


def test_seeded_sampling_reproduces(tiny_model_factory):
    ours, _ = _load_both(tiny_model_factory("llama"))
    params = GenerationParams(max_new_tokens=16, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    runs = [list(generate_tokens(ours.model, [1, 2, 3], params)) for _ in range(2)]
    assert runs[0] == runs[1]
    other = GenerationParams(max_new_tokens=16, temperature=1.0, top_p=0.9, top_k=50, seed=8)
    assert list(generate_tokens(ours.model, [1, 2, 3], other)) != runs[0]


def test_bfloat16_load_halves_memory_and_stays_close(tiny_model_factory):
    model_dir = tiny_model_factory("llama")
    f32 = load_model(LoadConfig(model=str(model_dir), dtype="float32"), progress=False)
    bf16 = load_model(LoadConfig(model=str(model_dir), dtype="bfloat16"), progress=False)
    assert bf16.model.embed_tokens.weight.dtype == torch.bfloat16
    assert bf16.memory_bytes * 2 == f32.memory_bytes
    ids = torch.arange(20)
    a = _forward(f32.model, DenseKVCache(f32.config, 32, torch.float32, f32.device), ids)
    b = _forward(bf16.model, DenseKVCache(bf16.config, 32, torch.bfloat16, bf16.device), ids)
    assert (a - b).abs().max().item() < 0.1 * a.abs().max().item()
