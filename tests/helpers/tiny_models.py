"""Tiny random checkpoints of every supported family, written as HF safetensors directories.

`VARIANTS` are the Llama family; `FAMILY_VARIANTS` the other decoders (Qwen3,
Gemma 2/3, Phi-3, the MoE families) and sliding-window configs, whose windows
(8 tokens) are shorter than the test prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# A few MB each: enough layers and heads to exercise GQA, rope and fused projections.
BASE = dict(
    vocab_size=384,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    bos_token_id=1,
    eos_token_id=2,
)

VARIANTS = {
    "llama": dict(model_type="llama", rope_theta=10000.0, tie_word_embeddings=False),
    "llama3": dict(
        model_type="llama",
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=64,
        ),
    ),
    "smollm2": dict(model_type="llama", rope_theta=100000.0, tie_word_embeddings=True),
    "mistral": dict(model_type="mistral", rope_theta=1000000.0, sliding_window=None),
    "qwen2": dict(model_type="qwen2", rope_theta=1000000.0, tie_word_embeddings=True),
}

WINDOW = 8  # the sliding window of the tiny sliding-window variants
_HEAD = dict(head_dim=16)
_LONGROPE = dict(  # 8 divisors per set (head_dim 16); the switch at 32 tokens
    rope_type="longrope", rope_theta=10000.0,
    short_factor=[1.0, 1.1, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0],
    long_factor=[1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 12.0, 16.0],
)  # fmt: skip

FAMILY_VARIANTS = {
    "qwen3": dict(model_type="qwen3", **_HEAD, rope_theta=1000000.0, tie_word_embeddings=True),
    "mistral_swa": dict(model_type="mistral", rope_theta=10000.0, sliding_window=WINDOW),
    "qwen2_swa": dict(
        model_type="qwen2", rope_theta=10000.0, num_hidden_layers=3, use_sliding_window=True,
        sliding_window=WINDOW, max_window_layers=1,
    ),
    "gemma2": dict(
        model_type="gemma2", **_HEAD, num_hidden_layers=3, query_pre_attn_scalar=24,
        sliding_window=WINDOW, attn_logit_softcapping=2.0, final_logit_softcapping=10.0,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    ),
    "gemma3": dict(
        model_type="gemma3_text", **_HEAD, num_hidden_layers=3, query_pre_attn_scalar=16,
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
        },
    ),
    "phi3": dict(
        model_type="phi3", pad_token_id=0, max_position_embeddings=128,
        original_max_position_embeddings=32, rope_parameters=_LONGROPE,
    ),
    "mixtral": dict(
        model_type="mixtral", intermediate_size=64, num_local_experts=4, num_experts_per_tok=2,
    ),
    "qwen3_moe": dict(
        model_type="qwen3_moe", **_HEAD, num_hidden_layers=3, num_experts=8,
        num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
        mlp_only_layers=[1],
    ),
    "qwen2_moe": dict(
        model_type="qwen2_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=48, norm_topk_prob=False,
    ),
}  # fmt: skip


def hf_config(variant: str):
    """A transformers config object for the named tiny variant."""
    from transformers import AutoConfig

    kwargs = {**BASE, **(VARIANTS.get(variant) or FAMILY_VARIANTS[variant])}
    model_type = kwargs.pop("model_type")
    return AutoConfig.for_model(model_type, **kwargs)


def write_tiny_model(path: Path, variant: str, seed: int = 0) -> Path:
    """Save a randomly initialised tiny model of `variant` under `path`; return the directory.

    The directory also holds a real byte-level BPE tokenizer with a ChatML template
    (see `tiny_tokenizer.py`), so it can be served end to end.
    """
    from transformers import AutoModelForCausalLM

    from helpers.tiny_tokenizer import write_tiny_tokenizer

    torch.manual_seed(seed)
    config = hf_config(variant)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # default init is too small to make logits differ much; widen it
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.08)
            else:  # norm weights and q/k/v biases
                p.add_(torch.randn_like(p) * 0.05)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    write_tiny_tokenizer(path, vocab_size=config.vocab_size)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": 2, "bos_token_id": 1}))
    return path
