"""The architecture registry: HF `model_type` -> a small delta on the shared decoder.

Every family is read by the same base reader (sizes, rope, tokens) and then
by its own `delta` function, which returns the `ModelConfig` fields that
differ from Llama's. The decoder (`models.llama`) turns those fields into its
layers; the loader (`loader.names`) holds each family's checkpoint name map.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from radixlm.config import SUPPORTED_ARCHITECTURES, ModelConfig, MoEConfig, RopeScaling

Delta = Callable[[dict[str, Any]], dict[str, Any]]


def _layer_types(cfg: dict[str, Any], default: Callable[[int], bool]) -> tuple[str, ...]:
    """"full"/"sliding" per layer: the config's `layer_types`, else `default(layer)` (sliding?)."""
    n = int(cfg["num_hidden_layers"])
    given = cfg.get("layer_types")
    if given:
        return tuple("sliding" if t == "sliding_attention" else "full" for t in given)
    return tuple("sliding" if default(i) else "full" for i in range(n))


def _window(cfg: dict[str, Any]) -> int | None:
    w = cfg.get("sliding_window")
    return int(w) if w else None


def _all_sliding(cfg: dict[str, Any]) -> dict[str, Any]:
    """Mistral, Mixtral, Phi-3: every layer slides when `sliding_window` is set."""
    return {"sliding_window": _window(cfg)}


def _qwen_sliding(cfg: dict[str, Any]) -> dict[str, Any]:
    """Qwen2/3: layers from `max_window_layers` on slide, when `use_sliding_window`."""
    if not cfg.get("use_sliding_window", False) or not _window(cfg):
        return {}
    first = int(cfg.get("max_window_layers", 0))
    return {"sliding_window": _window(cfg),
            "layer_types": _layer_types(cfg, lambda i: i >= first)}  # fmt: skip


def _qwen2(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"attention_bias": True, **_qwen_sliding(cfg)}


def _qwen3(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"qk_norm": True, **_qwen_sliding(cfg)}


def _gemma(cfg: dict[str, Any], sliding: Callable[[int], bool]) -> dict[str, Any]:
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ValueError(f"unsupported Gemma activation {act!r} (gelu_pytorch_tanh)")
    return {
        "norm_offset": 1.0,
        "embed_scale": math.sqrt(int(cfg["hidden_size"])),
        "hidden_act": "gelu_tanh",
        "sandwich_norms": True,
        "query_pre_attn_scalar": float(cfg.get("query_pre_attn_scalar") or 256),
        "attn_logit_softcap": cfg.get("attn_logit_softcapping"),
        "final_logit_softcap": cfg.get("final_logit_softcapping"),
        "sliding_window": _window(cfg),
        "layer_types": _layer_types(cfg, sliding),
        "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", True)),
    }


def _gemma2(cfg: dict[str, Any]) -> dict[str, Any]:
    return _gemma(cfg, lambda i: i % 2 == 0)


def _gemma3(cfg: dict[str, Any]) -> dict[str, Any]:
    pattern = int(cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern") or 6)
    delta = _gemma(cfg, lambda i: (i + 1) % pattern != 0)
    params = cfg.get("rope_parameters") or {}
    local = params.get("sliding_attention") if isinstance(params, dict) else None
    theta = (local or {}).get("rope_theta") or cfg.get("rope_local_base_freq") or 10000.0
    return {**delta, "qk_norm": True, "rope_local_theta": float(theta)}


def _phi3(cfg: dict[str, Any]) -> dict[str, Any]:
    partial = (cfg.get("rope_parameters") or {}).get("partial_rotary_factor", 1.0)
    if float(cfg.get("partial_rotary_factor", partial)) != 1.0:
        raise ValueError("phi3: partial rotary embeddings are not supported")
    return _all_sliding(cfg)


def _moe(cfg: dict[str, Any], num_experts_key: str, inter_key: str, norm: bool | None):
    n = int(cfg["num_hidden_layers"])
    step = int(cfg.get("decoder_sparse_step", 1) or 1)
    dense = set(cfg.get("mlp_only_layers") or []) | {i for i in range(n) if (i + 1) % step}
    return MoEConfig(
        num_experts=int(cfg.get(num_experts_key) or cfg["num_local_experts"]),
        top_k=int(cfg["num_experts_per_tok"]),
        intermediate_size=int(cfg[inter_key]),
        norm_topk_prob=bool(cfg.get("norm_topk_prob", False)) if norm is None else norm,
        shared_intermediate_size=int(cfg.get("shared_expert_intermediate_size") or 0),
        dense_layers=tuple(sorted(dense)),
    )


def _mixtral(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"moe": _moe(cfg, "num_local_experts", "intermediate_size", True), **_all_sliding(cfg)}


def _qwen2_moe(cfg: dict[str, Any]) -> dict[str, Any]:
    moe = _moe(cfg, "num_experts", "moe_intermediate_size", None)
    return {"moe": moe, "attention_bias": bool(cfg.get("qkv_bias", True)), **_qwen_sliding(cfg)}


def _qwen3_moe(cfg: dict[str, Any]) -> dict[str, Any]:
    moe = _moe(cfg, "num_experts", "moe_intermediate_size", None)
    return {"moe": moe, "qk_norm": True, **_qwen_sliding(cfg)}


# model_type -> (architecture, delta). Gemma 3's multimodal "gemma3" is read through
# its `text_config` (the text decoder only).
FAMILIES: dict[str, tuple[str, Delta]] = {
    "llama": ("llama", lambda cfg: {}),
    "mistral": ("mistral", _all_sliding),
    "qwen2": ("qwen2", _qwen2),
    "qwen3": ("qwen3", _qwen3),
    "gemma2": ("gemma2", _gemma2),
    "gemma3_text": ("gemma3", _gemma3),
    "gemma3": ("gemma3", _gemma3),
    "phi3": ("phi3", _phi3),
    "mixtral": ("mixtral", _mixtral),
    "qwen2_moe": ("qwen2_moe", _qwen2_moe),
    "qwen3_moe": ("qwen3_moe", _qwen3_moe),
}
assert {a for a, _ in FAMILIES.values()} == set(SUPPORTED_ARCHITECTURES)


def unsupported(model_type: str, where: str = "config.json") -> ValueError:
    """The one error for an architecture the decoder does not know, listing the known ones."""
    return ValueError(
        f"unsupported model_type {model_type!r} in {where}; "
        f"supported: {', '.join(sorted(FAMILIES))}"
    )


def config_from_hf(cfg: dict[str, Any], generation_config: dict[str, Any] | None = None):
    """A ModelConfig from a HF `config.json` dict (and `generation_config.json`)."""
    model_type = cfg.get("model_type", "llama")
    if model_type not in FAMILIES:
        raise unsupported(model_type)
    if model_type == "gemma3" and "text_config" in cfg:
        cfg = {**cfg["text_config"], "_name_or_path": cfg.get("_name_or_path", "")}
    arch, delta = FAMILIES[model_type]
    fields = {**_base_fields(cfg, generation_config), **delta(cfg)}
    if model_type in ("gemma3", "gemma3_text"):
        fields.update(_rope_fields(cfg, "full_attention"))
    return ModelConfig(architecture=arch, **fields)


def _rope_fields(cfg: dict[str, Any], layer_type: str | None = None) -> dict[str, Any]:
    """rope_theta and rope_scaling, from `rope_scaling`/`rope_theta` or transformers 5's
    `rope_parameters` (per layer type for Gemma 3)."""
    scaling, theta = cfg.get("rope_scaling"), cfg.get("rope_theta")
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and layer_type in params:
        params = params[layer_type]
    if isinstance(params, dict):
        theta = params.get("rope_theta", theta)
        scaling = scaling or params
    if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) in (
        "longrope", "su"
    ):  # fmt: skip
        original = scaling.get("original_max_position_embeddings") or cfg.get(
            "original_max_position_embeddings"
        )
        factor = int(cfg["max_position_embeddings"]) / int(original)
        scaling = {**scaling, "original_max_position_embeddings": original}
        rope = RopeScaling.from_hf(scaling)
        assert rope is not None
        if scaling.get("factor") is None:
            rope = RopeScaling(**{**rope.__dict__, "factor": factor})
        return {"rope_theta": float(theta or 10000.0), "rope_scaling": rope}
    return {"rope_theta": float(theta or 10000.0), "rope_scaling": RopeScaling.from_hf(scaling)}


def _base_fields(cfg: dict[str, Any], gen: dict[str, Any] | None) -> dict[str, Any]:
    """The fields every family reads the same way."""
    num_heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    eos = (gen or {}).get("eos_token_id", cfg.get("eos_token_id"))
    return {
        "vocab_size": int(cfg["vocab_size"]),
        "hidden_size": hidden,
        "intermediate_size": int(cfg["intermediate_size"]),
        "num_layers": int(cfg["num_hidden_layers"]),
        "num_heads": num_heads,
        "num_kv_heads": int(cfg.get("num_key_value_heads") or num_heads),
        "head_dim": int(cfg.get("head_dim") or hidden // num_heads),
        "rms_norm_eps": float(cfg.get("rms_norm_eps", 1e-5)),
        **_rope_fields(cfg),
        "max_position_embeddings": int(cfg.get("max_position_embeddings", 4096)),
        "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "attention_bias": bool(cfg.get("attention_bias", False)),
        "bos_token_id": cfg.get("bos_token_id"),
        "eos_token_ids": _as_tuple(eos),
        "name": str(cfg.get("_name_or_path", "")),
    }


def _as_tuple(x: int | list[int] | None) -> tuple[int, ...]:
    if x is None:
        return ()
    if isinstance(x, int):
        return (x,)
    return tuple(int(i) for i in x)
