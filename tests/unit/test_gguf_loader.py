"""GGUF loader pieces without model weights: names, q/k row order, rope factors, metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFWriter, RopeScalingType

from radixlm.config import RopeScaling
from radixlm.loader.gguf import (
    gguf_to_hf_name,
    read_gguf_config,
    rope_scaling_from_freq_factors,
    unpermute_rotary_rows,
)
from radixlm.models.llama import rope_inv_freq


def llama_cpp_row_order(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of `w` as llama.cpp's converter stores q/k: each head's two halves interleaved."""
    head_dim = w.shape[0] // n_head
    halves = w.reshape(n_head, 2, head_dim // 2, *w.shape[1:])
    return halves.transpose(1, 2).reshape(w.shape)


@pytest.mark.parametrize("n_head", [1, 2, 4])
def test_unpermute_inverts_llama_cpp_row_order(n_head):
    w = torch.randn(n_head * 16, 24)  # [rows, in_features]
    torch.testing.assert_close(unpermute_rotary_rows(llama_cpp_row_order(w, n_head), n_head), w)
    bias = torch.randn(n_head * 16)
    assert torch.equal(unpermute_rotary_rows(llama_cpp_row_order(bias, n_head), n_head), bias)


def test_unpermute_moves_rows_within_each_head():
    rows = torch.arange(8.0).unsqueeze(1)  # two heads of head_dim 4: HF order [0 1 | 2 3]
    stored = torch.tensor([0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]).unsqueeze(1)
    assert torch.equal(llama_cpp_row_order(rows, 2), stored)
    assert torch.equal(unpermute_rotary_rows(stored, 2), rows)


def test_unpermute_rejects_rows_that_do_not_split():
    with pytest.raises(ValueError, match="heads"):
        unpermute_rotary_rows(torch.zeros(10, 4), 4)


@pytest.mark.parametrize(
    ("gguf", "hf"),
    [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
        ("blk.3.attn_k.bias", "model.layers.3.self_attn.k_proj.bias"),
        ("blk.12.attn_v.weight", "model.layers.12.self_attn.v_proj.weight"),
        ("blk.1.attn_output.weight", "model.layers.1.self_attn.o_proj.weight"),
        ("blk.1.ffn_gate.weight", "model.layers.1.mlp.gate_proj.weight"),
        ("blk.1.ffn_up.weight", "model.layers.1.mlp.up_proj.weight"),
        ("blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj.weight"),
        ("blk.2.attn_norm.weight", "model.layers.2.input_layernorm.weight"),
        ("blk.2.ffn_norm.weight", "model.layers.2.post_attention_layernorm.weight"),
        ("rope_freqs.weight", None),
    ],
)
def test_tensor_names(gguf, hf):
    assert gguf_to_hf_name(gguf) == hf


@pytest.mark.parametrize("name", ["blk.0.ffn_gate_exps.weight", "pos_embd.weight", "blk.x.attn_q"])
def test_unknown_tensor_names_are_rejected(name):
    with pytest.raises(ValueError, match="unexpected GGUF tensor"):
        gguf_to_hf_name(name)


def freq_factors(head_dim: int, theta: float, scaling: RopeScaling) -> np.ndarray:
    """What llama.cpp stores in rope_freqs.weight: base / scaled frequency, float32."""
    base = rope_inv_freq(head_dim, theta, None)
    return (base / rope_inv_freq(head_dim, theta, scaling)).numpy().astype(np.float32)


def test_rope_factors_of_llama31_give_its_published_parameters():
    published = RopeScaling(kind="llama3", factor=8.0)  # 1, 4, 8192 are the defaults
    factors = freq_factors(128, 500000.0, published)
    assert rope_scaling_from_freq_factors(factors, 128, 500000.0) == published


@pytest.mark.parametrize(
    "scaling",
    [
        RopeScaling("llama3", 32.0, 1.0, 4.0, 8192),
        RopeScaling("llama3", 16.0, 2.0, 8.0, 4096),
        RopeScaling("llama3", 8.0, 1.0, 4.0, 64),  # one frequency in the band
        RopeScaling("llama3", 4.0, 1.0, 1.5, 2000),  # none in the band
    ],
)
def test_rope_factors_are_reproduced(scaling):
    head_dim, theta = 64, 500000.0
    factors = freq_factors(head_dim, theta, scaling)
    found = rope_scaling_from_freq_factors(factors, head_dim, theta)
    assert found is not None and found.kind == "llama3"
    torch.testing.assert_close(
        rope_inv_freq(head_dim, theta, found),
        rope_inv_freq(head_dim, theta, scaling),
        rtol=1e-4,
        atol=0,
    )


def test_rope_factors_trivial_cases():
    assert rope_scaling_from_freq_factors(np.ones(32), 64, 10000.0) is None
    assert rope_scaling_from_freq_factors(np.full(32, 4.0), 64, 10000.0) == RopeScaling(
        "linear", 4.0
    )


def test_rope_factors_that_no_scaling_explains_are_rejected():
    factors = np.ones(32)
    factors[5] = 3.0  # one bump in the middle of the spectrum: not a llama3 band
    with pytest.raises(ValueError, match="not supported"):
        rope_scaling_from_freq_factors(factors, 64, 10000.0)


# --- metadata ----------------------------------------------------------------


def write_metadata_only(path: Path, arch: str = "llama", **extra) -> Path:
    """A GGUF file with Llama-like metadata, no tensors; `extra` maps key suffixes to values."""
    writer = GGUFWriter(path, arch)
    writer.add_name("tiny")
    writer.add_block_count(2)
    writer.add_context_length(2048)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(100)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    for setter, value in extra.items():
        getattr(writer, f"add_{setter}")(value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_metadata_to_config(tmp_path):
    path = write_metadata_only(tmp_path / "m.gguf", eot_token_id=7, key_length=32, value_length=32)
    cfg = read_gguf_config(path)
    assert (cfg.architecture, cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == (
        "llama", 2, 64, 128,
    )  # fmt: skip
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size) == (4, 2, 32, 100)
    assert (cfg.rms_norm_eps, cfg.rope_theta, cfg.max_position_embeddings) == (1e-6, 10000.0, 2048)
    assert (cfg.bos_token_id, cfg.eos_token_ids) == (1, (2, 7))
    assert cfg.tie_word_embeddings  # no output.weight
    assert not cfg.attention_bias and cfg.rope_scaling is None and cfg.sliding_window is None
    assert cfg.name == "tiny"


def test_qwen2_has_attention_bias(tmp_path):
    cfg = read_gguf_config(write_metadata_only(tmp_path / "q.gguf", arch="qwen2"))
    assert cfg.architecture == "qwen2" and cfg.attention_bias


def test_linear_rope_scaling_and_sliding_window(tmp_path):
    path = write_metadata_only(
        tmp_path / "m.gguf",
        rope_scaling_type=RopeScalingType.LINEAR,
        rope_scaling_factor=4.0,
        sliding_window=1024,
    )
    cfg = read_gguf_config(path)
    assert cfg.rope_scaling == RopeScaling("linear", 4.0)
    # every layer slides over 1024 tokens; the window does not cap the context
    assert cfg.sliding_window == 1024 and cfg.layer_window(1) == 1024
    assert cfg.context_length == 2048


def test_unsupported_rope_scaling_is_rejected(tmp_path):
    path = write_metadata_only(
        tmp_path / "m.gguf", rope_scaling_type=RopeScalingType.YARN, rope_scaling_factor=4.0
    )
    with pytest.raises(ValueError, match="'yarn' is not supported"):
        read_gguf_config(path)


def test_unsupported_architecture_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unsupported GGUF architecture 'gpt2'"):
        read_gguf_config(write_metadata_only(tmp_path / "g.gguf", arch="gpt2"))


def test_missing_required_key_is_named(tmp_path):
    path = tmp_path / "m.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_block_count(2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"llama\.embedding_length"):
        read_gguf_config(path)
