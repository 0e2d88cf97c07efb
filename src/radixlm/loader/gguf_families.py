"""Per-family GGUF maps: llama.cpp architecture names, block tensor names, and metadata.

Each family's block tensors map onto the canonical HF names of `loader.names`
(Phi-3's fused tensors are split by its HF name map afterwards; experts stored
stacked as `ffn_*_exps` [E, out, in] are yielded one expert at a time). What
llama.cpp's converter changed is undone here: Gemma's norm weights were
stored as 1 + weight.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from radixlm.config import MoEConfig, RopeScaling

# GGUF `general.architecture` -> our architecture ("llama" with experts is Mixtral).
GGUF_ARCHITECTURES = {
    "llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "qwen2moe": "qwen2_moe",
    "qwen3moe": "qwen3_moe", "gemma2": "gemma2", "gemma3": "gemma3", "phi3": "phi3",
}  # fmt: skip

_LLAMA_BLOCK = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_QK_NORM = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
_GEMMA = {
    "post_attention_norm": "post_attention_layernorm",  # normalises the attention output
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_PHI3 = {"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"}  # fused, split later
_MOE = {
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_exps": "mlp.experts.{e}.gate_proj",
    "ffn_up_exps": "mlp.experts.{e}.up_proj",
    "ffn_down_exps": "mlp.experts.{e}.down_proj",
    "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
}
BLOCK_NAMES: dict[str, dict[str, str]] = {
    "llama": _LLAMA_BLOCK,
    "mistral": _LLAMA_BLOCK,
    "qwen2": _LLAMA_BLOCK,
    "qwen3": {**_LLAMA_BLOCK, **_QK_NORM},
    "gemma2": {**_LLAMA_BLOCK, **_GEMMA},
    "gemma3": {**_LLAMA_BLOCK, **_GEMMA, **_QK_NORM},
    "phi3": {**_LLAMA_BLOCK, **_PHI3},
    "mixtral": {**_LLAMA_BLOCK, **_MOE},
    "qwen2_moe": {**_LLAMA_BLOCK, **_MOE},
    "qwen3_moe": {**_LLAMA_BLOCK, **_QK_NORM, **_MOE},
}
# Tensors that carry no weights of their own (read into the config instead).
SKIPPED = frozenset({"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"})
NORM_OFFSET = {"gemma2": 1.0, "gemma3": 1.0}  # subtracted: the converter stored 1 + weight


def family_fields(meta: Any, arch: str, hidden: int, num_heads: int, head_dim: int, layers: int):
    """The ModelConfig fields of `arch` beyond Llama's, from GGUF metadata `meta`
    (a `gguf._Metadata`). Keys follow llama.cpp's names."""
    window = meta.get("{arch}.attention.sliding_window")
    window = int(window) if window else None
    fields: dict[str, Any] = {}
    if arch in ("qwen3", "qwen3_moe", "gemma3"):
        fields["qk_norm"] = True
    if arch in ("qwen2", "qwen2_moe"):
        fields["attention_bias"] = True
    if arch in ("llama", "phi3", "mixtral") and window:
        fields["sliding_window"] = window
    if arch in ("gemma2", "gemma3"):
        fields.update(_gemma_fields(meta, arch, hidden, num_heads, head_dim, layers, window))
    if arch in ("mixtral", "qwen2_moe", "qwen3_moe"):
        fields["moe"] = _moe(meta, arch, layers)
    return fields


def _gemma_fields(meta, arch, hidden, num_heads, head_dim, layers, window) -> dict[str, Any]:
    # `attention.scale` when the file has it; else llama.cpp's rule: the 27B models scale
    # queries by hidden / heads, the others by head_dim
    big = (arch, layers) in (("gemma2", 46), ("gemma3", 62))
    scale = meta.get("{arch}.attention.scale")
    scalar = float(hidden // num_heads if big else head_dim)
    if scale:
        scalar = float(f"{float(scale) ** -2:.6g}")  # the float32 key, rounded
    fields: dict[str, Any] = {
        "norm_offset": 1.0,
        "embed_scale": math.sqrt(hidden),
        "hidden_act": "gelu_tanh",
        "sandwich_norms": True,
        "query_pre_attn_scalar": scalar,
        "attn_logit_softcap": _opt_float(meta.get("{arch}.attn_logit_softcapping")),
        "final_logit_softcap": _opt_float(meta.get("{arch}.final_logit_softcapping")),
        "sliding_window": window,
        "tie_word_embeddings": meta.tensor("output.weight") is None,
    }
    pattern = meta.get("{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list):  # one flag per layer, True = sliding
        sliding = [bool(p) for p in pattern]
    elif arch == "gemma2":
        sliding = [i % 2 == 0 for i in range(layers)]
    else:
        every = int(pattern or 6)
        sliding = [(i + 1) % every != 0 for i in range(layers)]
    fields["layer_types"] = tuple("sliding" if s else "full" for s in sliding)
    if arch == "gemma3":
        fields["rope_local_theta"] = float(meta.get("{arch}.rope.freq_base_swa", 10000.0))
    return fields


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _moe(meta: Any, arch: str, layers: int) -> MoEConfig:
    ffn = meta.get("{arch}.expert_feed_forward_length")
    ffn = ffn or meta.require("{arch}.feed_forward_length")
    norm = meta.get("{arch}.expert_weights_norm")
    dense = tuple(i for i in range(layers) if meta.tensor(f"blk.{i}.ffn_gate_inp.weight") is None)
    return MoEConfig(
        num_experts=int(meta.require("{arch}.expert_count")),
        top_k=int(meta.require("{arch}.expert_used_count")),
        intermediate_size=int(ffn),
        norm_topk_prob=bool(norm) if norm is not None else arch != "qwen2_moe",
        shared_intermediate_size=int(meta.get("{arch}.expert_shared_feed_forward_length") or 0),
        dense_layers=dense,
    )


def longrope_scaling(meta: Any, factors_long, factors_short, context: int) -> RopeScaling:
    """Phi-3's LongRoPE from its `rope_factors_long/short` tensors and rope metadata."""
    original = int(meta.get("{arch}.rope.scaling.original_context_length") or context)
    attn = meta.get("{arch}.rope.scaling.attn_factor")
    return RopeScaling(
        kind="longrope",
        factor=context / original,
        original_max_position_embeddings=original,
        short_factor=tuple(float(f) for f in factors_short),
        long_factor=tuple(float(f) for f in factors_long),
        attention_factor=None if attn is None else float(attn),
    )


def unpermute_rotary_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row reordering; return `w` [n_head * head_dim, ...] in HF order.

    Within each head, llama.cpp stores row pairs (i, i + head_dim/2)
    next to each other; HF keeps the two halves apart. Works on weights
    [rows, in] and biases [rows].
    """
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"{rows} rows cannot be split into {n_head} heads of even size")
    # [n_head, head_dim/2, 2, ...] -> [n_head, 2, head_dim/2, ...]
    split = w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
    return split.transpose(1, 2).reshape(w.shape)
