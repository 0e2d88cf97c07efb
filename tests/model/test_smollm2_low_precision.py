"""bf16, int8 and int4 on the real SmolLM2: the radix cache changes speed, not answers.

In these modes cache on and off may disagree only at a near-tie. 32 shared-prefix
prompts (4 system prompts x 8 questions) run greedy with the cache on and off.
Each disagreement must start where the top-2 logprob gap is under NEAR_TIE (in
either run): a cache bug diverges at large gaps. The gaps are printed.

NEAR_TIE is 0.15, not a tighter 0.05: on a 2-core Xeon with AMX the int4 run had a
disagreement at a gap of 0.120 (prompt 15, token 3), and with every layer forced
onto the same dequantized bf16 weights in both runs still one at 0.080. That is the
bfloat16 rounding of the activations through 30 layers in a different batch shape
(the cache-off prefill runs whole prompts, the cache-on one only the questions),
not wrong K/V: a slot holding another token's K/V moves logits by whole units.

How many agree is machine-dependent (bf16 kernels differ between CPUs). On a
2-core AVX-512/AMX Xeon: 30/32 for bf16 and int4, 28/32 for int8. Cache off
prefills whole prompts (over 32 rows: weights dequantized to bf16, which rounds
int8 x scale), cache on only the suffix (the int8 kernel). The floor asserted
below is 26/32, with the near-tie rule as the check that matters.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.engine_checks import assert_clean

import radixlm
from radixlm.attention.paged import PagedContext, head_major_fits
from radixlm.config import LoadConfig
from radixlm.kvcache.pool import KVPool
from radixlm.loader import LoadedModel, load_model
from radixlm.models.quant import int8_activations_supported

SYSTEMS = [
    "You are a concise assistant. Answer in one short sentence.",
    "You are a helpful teacher. Explain simply, in at most two sentences.",
    "You answer questions about the world. Be brief and precise.",
    "You are a friendly guide. Reply with one clear sentence.",
]
QUESTIONS = [
    "What is the capital of France?", "Name a primary colour.", "What is 2 + 2?",
    "Which planet is known as the red planet?", "What do bees make?",
    "How many days are in a week?", "What is the boiling point of water in Celsius?",
    "Who wrote Romeo and Juliet?",
]  # fmt: skip
NEAR_TIE = 0.15


def test_default_mode_answers_paris(smollm2, smollm2_path):
    """The default mode (bf16 compute, the GGUF's int4, int8 activations where the CPU
    has AVX512-VNNI) answers the plain chat question. The first token is a near-tie
    ("The" over "L", by 0.27 with bfloat16 activations, 0.21 with int8): int8
    activations without their outliers taken out answered "L'Étoile, la Marseillaise",
    as llama-server does on this file."""
    _, tok = smollm2
    loaded = load_model(LoadConfig(model=str(smollm2_path)), progress=False)
    a8 = "-a8" if int8_activations_supported() else ""
    assert (loaded.dtype, loaded.precision) == (torch.bfloat16, "int4" + a8)
    prompt = tok.apply_chat_template([{"role": "user", "content": QUESTIONS[0]}])
    with radixlm.Engine(loaded=loaded, tokenizer=tok, max_total_tokens=4096) as eng:
        out = eng.generate(input_ids=prompt, sampling_params={"temperature": 0,
                                                              "max_new_tokens": 12})
        assert_clean(eng)
    assert "Paris" in out["text"]


def prefill_logprobs(loaded: LoadedModel, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab] float32 log-probabilities of one prefill through a paged pool."""
    n = len(ids)
    pool = KVPool.for_model(loaded.config, loaded.dtype, loaded.device, max_total_tokens=n + 64,
                            head_major=head_major_fits(loaded.config, loaded.dtype, loaded.device))
    slots = pool.alloc(n)
    ctx = PagedContext(pool, [slots], [0], [n], slots)
    with torch.inference_mode():
        out = loaded.model(torch.tensor(ids), ctx.positions, ctx, torch.arange(n))
    return out.float().log_softmax(-1)


def test_default_mode_stays_close_to_float32(smollm2, smollm2_path):
    """On 500 tokens of real text the default mode's next-token distributions stay close
    to float32 on the same (dequantized) weights. Measured on an AMD EPYC (Zen 4): mean
    KL 3.82e-3 with bfloat16 activations, 4.32e-3 with int8 ones, top-1 agreement
    0.948 / 0.936; int8 activations without their outliers taken out gave 6.0e-3, and
    a wrong nibble order or scale gives KL of order 1. The bound is 5e-3 (the text is
    docs/architecture.md: editing it moves these figures a little)."""
    reference, tok = smollm2
    text = (Path(__file__).parents[2] / "docs" / "architecture.md").read_text()
    ids = tok.encode(text)[:500]
    ref = prefill_logprobs(reference, ids)
    got = prefill_logprobs(load_model(LoadConfig(model=str(smollm2_path)), progress=False), ids)
    kl = (ref.exp() * (ref - got)).sum(-1).mean().item()
    top1 = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    print(f"default mode: mean KL to float32 {kl:.2e}, top-1 agreement {top1:.3f}")
    assert kl <= 5e-3 and top1 >= 0.9


@pytest.mark.parametrize("mode", ["none", "int8", "int4", "int4-a8"])
def test_cache_on_off_agree_but_at_near_ties(smollm2, smollm2_path, mode):
    _, tok = smollm2
    quantization, a8 = mode.removesuffix("-a8"), mode.endswith("-a8")
    if a8 and not int8_activations_supported():
        pytest.skip("int8 activations need AVX512-VNNI, AVX512-VBMI and AVX512-BF16")
    config = LoadConfig(model=str(smollm2_path), dtype="bfloat16", quantization=quantization,
                        activations="int8" if a8 else "bfloat16")  # fmt: skip
    loaded = load_model(config, progress=False)
    assert loaded.precision == mode
    prompts = [
        tok.apply_chat_template([{"role": "system", "content": s * 3},
                                 {"role": "user", "content": q}])
        for s in SYSTEMS for q in QUESTIONS
    ]  # fmt: skip
    params = {"temperature": 0, "max_new_tokens": 12}
    runs = []
    for off in (False, True):
        eng = radixlm.Engine(loaded=loaded, tokenizer=tok, max_total_tokens=8192,
                             disable_radix_cache=off)  # fmt: skip
        runs.append(eng.generate(input_ids=prompts, sampling_params=params,
                                 return_logprob=True, top_logprobs_num=2))  # fmt: skip
        assert_clean(eng)
        eng.shutdown()
    on, off = runs
    assert sum(r["meta_info"]["cached_tokens"] for r in on) > 28 * 40  # the prefixes were shared
    assert "Paris" in on[0]["text"] and "Paris" in off[0]["text"]
    agree = 0
    for i, (a, b) in enumerate(zip(on, off, strict=True)):
        if a["output_ids"] == b["output_ids"]:
            agree += 1
            continue
        ids_a, ids_b = a["output_ids"], b["output_ids"]
        shorter = min(len(ids_a), len(ids_b))  # past it, one run has ended (a tie on eos)
        at = next((j for j in range(shorter) if ids_a[j] != ids_b[j]), shorter)
        tops = [r["meta_info"]["output_top_logprobs"] for r in (a, b)]
        gap = min(top[at][0][0] - top[at][1][0] for top in tops if at < len(top))
        print(f"{mode}: prompt {i} differs at token {at}, top-2 gap {gap:.4f}")
        assert gap < NEAR_TIE, f"prompt {i}: cache on/off differ at token {at}, gap {gap:.3f}"
    print(f"{mode}: {agree}/32 prompts identical with the cache on and off")
    assert agree >= 26
