"""Tiny random Llama-family checkpoints, written as HF safetensors directories."""

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


def hf_config(variant: str):
    """A transformers config object for the named tiny variant."""
    from transformers import AutoConfig

    kwargs = {**BASE, **VARIANTS[variant]}
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
