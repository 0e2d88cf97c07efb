"""Per-family checkpoint name maps: HF tensors -> the decoder's canonical (Llama-style) names.

The canonical names are Llama's (`model.layers.N.self_attn.q_proj.weight`,
`...mlp.gate_proj.weight`), plus `...mlp.gate.weight` (a router) and
`...mlp.experts.E.{gate,up,down}_proj.weight` for mixture-of-experts layers.
A family whose checkpoint already uses them has no map here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

import torch

from radixlm.config import ModelConfig

Weights = Iterable[tuple[str, torch.Tensor]]


def _phi3(config: ModelConfig, weights: Weights) -> Iterator[tuple[str, torch.Tensor]]:
    """Phi-3 stores q/k/v and gate/up fused: split them into their parts."""
    sizes = [config.q_size, config.kv_size, config.kv_size]
    for name, t in weights:
        if ".self_attn.qkv_proj." in name:
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), t.split(sizes), strict=True):
                yield name.replace("qkv_proj", part), chunk
        elif ".mlp.gate_up_proj." in name:
            gate, up = t.chunk(2, dim=0)
            yield name.replace("gate_up_proj", "gate_proj"), gate
            yield name.replace("gate_up_proj", "up_proj"), up
        else:
            yield name, t


_MIXTRAL_EXPERT = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
_MIXTRAL_RE = re.compile(r"(.*)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight")


def _mixtral(config: ModelConfig, weights: Weights) -> Iterator[tuple[str, torch.Tensor]]:
    """Mixtral's `block_sparse_moe` with experts' w1/w3/w2 -> `mlp` with gate/up/down."""
    for name, t in weights:
        if m := _MIXTRAL_RE.fullmatch(name):
            yield f"{m.group(1)}.mlp.experts.{m.group(2)}.{_MIXTRAL_EXPERT[m.group(3)]}.weight", t
        else:
            yield name.replace(".block_sparse_moe.gate.", ".mlp.gate."), t


_GEMMA3_PREFIXES = ("model.language_model.", "language_model.model.")


def _gemma3(config: ModelConfig, weights: Weights) -> Iterator[tuple[str, torch.Tensor]]:
    """A multimodal Gemma 3 checkpoint: keep its text decoder, drop the vision tower."""
    for name, t in weights:
        for prefix in _GEMMA3_PREFIXES:
            if name.startswith(prefix):
                yield "model." + name.removeprefix(prefix), t
                break
        else:
            if name == "language_model.lm_head.weight":
                yield "lm_head.weight", t
            elif not name.startswith(("model.vision", "vision", "model.multi_modal",
                                      "multi_modal")):  # fmt: skip
                yield name, t


NAME_MAPS: dict[str, Callable[[ModelConfig, Weights], Iterator[tuple[str, torch.Tensor]]]] = {
    "phi3": _phi3,
    "mixtral": _mixtral,
    "gemma3": _gemma3,
}


def canonical_weights(config: ModelConfig, weights: Weights) -> Weights:
    """The checkpoint's tensors under canonical names (unchanged for most families)."""
    rename = NAME_MAPS.get(config.architecture)
    return weights if rename is None else rename(config, weights)
