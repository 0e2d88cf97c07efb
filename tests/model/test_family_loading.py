"""Reading each family's config, the unsupported-architecture error, and low-precision loads."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from helpers.engine_checks import assert_clean
from helpers.reference import full_logits, tokens
from helpers.tiny_models import FAMILY_VARIANTS

import radixlm
from radixlm.config import LoadConfig, ModelConfig
from radixlm.loader import load_model
from radixlm.loader.hf import read_hf_config
from radixlm.models.registry import FAMILIES


def test_an_unsupported_model_type_names_every_supported_one(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    with pytest.raises(ValueError, match="unsupported model_type 'gpt_neox'") as e:
        read_hf_config(tmp_path)
    for model_type in FAMILIES:
        assert model_type in str(e.value)


def test_family_deltas_read_from_config_json(tiny_model_factory):
    g2 = read_hf_config(tiny_model_factory("gemma2"))
    assert (g2.architecture, g2.norm_offset, g2.hidden_act, g2.sandwich_norms) == (
        "gemma2", 1.0, "gelu_tanh", True,
    )  # fmt: skip
    assert g2.embed_scale == pytest.approx(8.0)  # sqrt(64)
    assert (g2.attn_logit_softcap, g2.final_logit_softcap, g2.query_pre_attn_scalar) == (
        2.0, 10.0, 24.0,
    )  # fmt: skip
    assert [g2.layer_window(i) for i in range(3)] == [8, None, 8]
    g3 = read_hf_config(tiny_model_factory("gemma3"))
    assert g3.qk_norm and g3.rope_local_theta == 10000.0 and g3.rope_theta == 1000000.0
    assert g3.rope_scaling is not None and g3.rope_scaling.kind == "linear"
    assert [g3.layer_window(i) for i in range(3)] == [8, 8, None]
    q2 = read_hf_config(tiny_model_factory("qwen2_swa"))  # layers from max_window_layers on
    assert [q2.layer_window(i) for i in range(3)] == [None, 8, 8]
    assert read_hf_config(tiny_model_factory("qwen2")).layer_window(0) is None
    m = read_hf_config(tiny_model_factory("mistral_swa"))
    assert m.layer_window(1) == 8 and m.context_length == m.max_position_embeddings
    wide = dataclasses.replace(m, sliding_window=m.max_position_embeddings)
    assert wide.layer_window(1) is None  # a window over the whole context is no window
    moe = read_hf_config(tiny_model_factory("qwen3_moe")).moe
    assert moe is not None and (moe.num_experts, moe.top_k, moe.dense_layers) == (8, 2, (1,))
    shared = read_hf_config(tiny_model_factory("qwen2_moe")).moe
    assert shared is not None and shared.shared_intermediate_size == 48
    phi = read_hf_config(tiny_model_factory("phi3")).rope_scaling
    assert phi is not None and phi.kind == "longrope" and phi.factor == 4.0  # 128 / 32


def test_a_multimodal_gemma3_config_reads_its_text_decoder():
    text = {"model_type": "gemma3_text", "vocab_size": 100, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4,
            "num_key_value_heads": 1, "head_dim": 16, "sliding_window": 512,
            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0}  # fmt: skip
    cfg = ModelConfig.from_hf({"model_type": "gemma3", "text_config": text})
    assert cfg.architecture == "gemma3" and cfg.rope_local_theta == 10000.0
    # without layer_types: every sixth layer is global
    assert [cfg.layer_window(i) for i in range(6)] == [512] * 5 + [None]


@pytest.mark.parametrize("variant", ["qwen3", "gemma2", "gemma3", "phi3"])
@pytest.mark.parametrize("quantization", ["none", "int8", "int4"])
def test_bfloat16_and_quantized_loads_stay_close(tiny_model_factory, variant, quantization):
    path = tiny_model_factory(variant)
    exact = load_model(LoadConfig(model=str(path), dtype="float32"), progress=False)
    low = load_model(LoadConfig(model=str(path), dtype="bfloat16", quantization=quantization),
                     progress=False)  # fmt: skip
    assert low.quantization == quantization
    assert low.memory_bytes < exact.memory_bytes
    ids = tokens(24, seed=9, vocab=exact.config.vocab_size)
    a, b = full_logits(exact, ids), full_logits(low, ids)
    assert torch.isfinite(b).all()
    # int4 on these unstructured random weights is coarse for Llama too (~0.25)
    bound = {"none": 0.05, "int8": 0.08, "int4": 0.5}[quantization]
    assert (a - b).abs().max().item() < bound * a.abs().max().item()


@pytest.mark.parametrize("variant", sorted(FAMILY_VARIANTS))
def test_the_engine_serves_every_family_with_default_dtype_and_quantization(
    tiny_model_factory, variant
):
    """--dtype auto / --quantization auto (bf16 on CPUs with native bf16): a batch of
    shared-prefix requests completes and the pool is clean afterwards."""
    path = tiny_model_factory(variant)
    prompts = [tokens(12, seed=1, vocab=384) + tokens(n, seed=n, vocab=384) for n in (1, 5, 9)]
    params = {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True}
    with radixlm.Engine(model=str(path), max_total_tokens=1024, debug=True) as eng:
        outs = eng.generate(input_ids=prompts, sampling_params=params)
        assert all(len(o["output_ids"]) == 6 for o in outs)
        assert all(0 <= t < 384 for o in outs for t in o["output_ids"])
        assert_clean(eng)
