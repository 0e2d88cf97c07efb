"""GGUF files of the non-Llama families: the same tiny model from GGUF and from safetensors.

Each tiny checkpoint is converted as llama.cpp's converter lays it out: the
gguf package's own tensor-name map for the architecture, experts stacked into
`ffn_*_exps`, Gemma's norms stored as 1 + weight, q/k rows permuted for the
"llama" architecture (Mixtral), LongRoPE factors as `rope_factors_*` tensors,
and the architecture's metadata keys. Stored as F32, so the two loads must
give the same logits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from family_checks import TOL
from gguf import GGUFWriter, RopeScalingType, get_tensor_name_map
from gguf.constants import MODEL_ARCH, GGMLQuantizationType
from gguf.quants import quantize
from helpers.reference import full_logits, tokens
from safetensors.torch import load_file

from radixlm.config import LoadConfig
from radixlm.loader import load_model
from radixlm.loader.gguf import read_gguf_config
from radixlm.loader.hf import read_hf_config

Q8 = GGMLQuantizationType.Q8_0
# our variant -> llama.cpp's architecture
ARCH = {"qwen3": "QWEN3", "gemma2": "GEMMA2", "gemma3": "GEMMA3", "phi3": "PHI3",
        "mixtral": "LLAMA", "qwen3_moe": "QWEN3MOE", "qwen2_moe": "QWEN2MOE"}  # fmt: skip
_EXPERT_PARTS = {"w1": "gate", "w3": "up", "w2": "down", "gate_proj": "gate",
                 "up_proj": "up", "down_proj": "down"}  # fmt: skip


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order for the "llama" architecture."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
        w.shape
    )


def _metadata(writer: GGUFWriter, variant: str, cfg: dict) -> None:
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    rope = cfg.get("rope_parameters") or {}
    theta = rope.get("full_attention", rope).get("rope_theta", cfg.get("rope_theta", 10000.0))
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_freq_base(theta)
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_token_list([f"<t{i}>" for i in range(cfg["vocab_size"])])
    writer.add_bos_token_id(cfg["bos_token_id"])
    writer.add_eos_token_id(cfg["eos_token_id"])
    if variant.startswith("gemma"):
        writer.add_sliding_window(cfg["sliding_window"])
        writer.add_attention_scale(cfg["query_pre_attn_scalar"] ** -0.5)
    if variant == "gemma2":
        writer.add_attn_logit_softcapping(cfg["attn_logit_softcapping"])
        writer.add_final_logit_softcapping(cfg["final_logit_softcapping"])
    if variant == "gemma3":
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in cfg["layer_types"]])
        writer.add_rope_freq_base_swa(rope["sliding_attention"]["rope_theta"])
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["full_attention"]["factor"])
    if variant == "phi3":
        writer.add_rope_scaling_orig_ctx_len(cfg["original_max_position_embeddings"])
        writer.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], np.float32))
        writer.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], np.float32))
    if "moe" in variant or variant == "mixtral":
        writer.add_expert_count(cfg.get("num_experts") or cfg["num_local_experts"])
        writer.add_expert_used_count(cfg["num_experts_per_tok"])
    if "moe" in variant:
        writer.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    if variant == "qwen2_moe":
        writer.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])


def write_family_gguf(hf_dir: Path, variant: str, out: Path, q8: bool = False) -> Path:
    """Convert the tiny checkpoint of `variant` in `hf_dir` to the GGUF file `out`: F32,
    or with `q8` every 2-D weight as Q8_0."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    arch = MODEL_ARCH[ARCH[variant]]
    names = get_tensor_name_map(arch, cfg["num_hidden_layers"])
    llama = get_tensor_name_map(MODEL_ARCH.LLAMA, cfg["num_hidden_layers"])  # dense MoE layers
    writer = GGUFWriter(out, {"LLAMA": "llama"}.get(ARCH[variant], ARCH[variant].lower()))
    _metadata(writer, variant, cfg)
    experts: dict[tuple[int, str], dict[int, np.ndarray]] = {}
    for hf_name, tensor in load_file(hf_dir / "model.safetensors").items():
        w = tensor.float().numpy()
        parts = hf_name.split(".")
        if "experts" in parts:  # model.layers.L.<mlp>.experts.E.<part>.weight
            layer, e = int(parts[2]), int(parts[parts.index("experts") + 1])
            experts.setdefault((layer, _EXPERT_PARTS[parts[-2]]), {})[e] = w
            continue
        if variant.startswith("gemma") and hf_name.endswith("norm.weight"):
            w = w + 1.0
        if variant == "mixtral" and ".q_proj." in hf_name:
            w = _permute(w, cfg["num_attention_heads"])
        elif variant == "mixtral" and ".k_proj." in hf_name:
            w = _permute(w, cfg["num_key_value_heads"])
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias")) or llama.get_name(
            hf_name, try_suffixes=(".weight", ".bias")
        )
        assert name is not None, hf_name
        w = np.ascontiguousarray(w, dtype=np.float32)
        if q8 and w.ndim == 2:
            writer.add_tensor(name, quantize(w, Q8), raw_dtype=Q8)
        else:
            writer.add_tensor(name, w)
    for (layer, part), by_expert in sorted(experts.items()):
        stacked = np.stack([by_expert[e] for e in sorted(by_expert)])  # [E, out, in]
        name = f"blk.{layer}.ffn_{part}_exps.weight"
        if q8:
            writer.add_tensor(name, quantize(stacked, Q8), raw_dtype=Q8)
        else:
            writer.add_tensor(name, stacked)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.mark.parametrize("variant", sorted(ARCH))
def test_gguf_and_safetensors_give_the_same_model(tiny_model_factory, tmp_path, variant):
    hf_dir = tiny_model_factory(variant)
    path = write_family_gguf(hf_dir, variant, tmp_path / f"{variant}.gguf")
    from_gguf, from_hf = read_gguf_config(path), read_hf_config(hf_dir)
    for field in ("architecture", "num_layers", "head_dim", "qk_norm", "norm_offset",
                  "sandwich_norms", "hidden_act", "query_pre_attn_scalar", "attn_logit_softcap",
                  "final_logit_softcap", "sliding_window", "rope_local_theta", "moe",
                  "tie_word_embeddings", "attention_bias"):  # fmt: skip
        assert getattr(from_gguf, field) == getattr(from_hf, field), field
    assert [from_gguf.layer_window(i) for i in range(from_gguf.num_layers)] == [
        from_hf.layer_window(i) for i in range(from_hf.num_layers)
    ]
    assert math.isclose(from_gguf.rope_theta, from_hf.rope_theta, rel_tol=1e-6)
    a = load_model(LoadConfig(model=str(path), dtype="float32"), progress=False)
    b = load_model(LoadConfig(model=str(hf_dir), dtype="float32"), progress=False)
    ids = tokens(40, seed=11, vocab=b.config.vocab_size)
    torch.testing.assert_close(full_logits(a, ids), full_logits(b, ids), rtol=0, atol=TOL)


@pytest.mark.parametrize("variant", ["qwen3", "gemma2", "gemma3", "phi3", "mixtral", "qwen3_moe"])
def test_a_q8_0_file_runs_int8_in_bfloat16_and_stays_close(tiny_model_factory, tmp_path, variant):
    """--dtype bfloat16 --quantization auto keeps a Q8_0 file's precision (int8 weights);
    its distribution stays close to the same file dequantized to float32."""
    path = write_family_gguf(tiny_model_factory(variant), variant, tmp_path / "q8.gguf", q8=True)
    exact = load_model(LoadConfig(model=str(path), dtype="float32"), progress=False)
    quant = load_model(LoadConfig(model=str(path), dtype="bfloat16"), progress=False)
    assert exact.quantization == "none" and quant.quantization == "int8"
    ids = tokens(40, seed=12, vocab=exact.config.vocab_size)
    ref = full_logits(exact, ids).log_softmax(-1)
    got = full_logits(quant, ids).float().log_softmax(-1)
    kl = (ref.exp() * (ref - got)).sum(-1).mean().item()
    print(f"{variant} Q8_0 as int8: mean KL {kl:.1e}")
    assert kl < 1e-3, kl
