"""Hugging Face tensor names -> the decoder's parameters, with fused and stacked targets.

The decoder fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj`, and
stacks a mixture-of-experts layer's experts into `experts.w13` [E, 2I, H] and
`experts.w2` [E, H, I]. A checkpoint tensor therefore lands in a *shard* of
one parameter, named by a key:

- None: the whole parameter;
- int j: part j along dim 0 of a fused projection (q, k, v or gate, up);
- (e, j): expert e of a stacked parameter, and part j of it (None: all of it).

Family-specific checkpoint names (Phi-3's fused tensors, Mixtral's w1/w2/w3)
are rewritten into these canonical ones by `loader.names` before they get here.
"""

from __future__ import annotations

import re

import torch

from radixlm.config import ModelConfig

ShardKey = int | tuple[int, int | None] | None

_FUSED = {  # last module name -> (fused module name, part)
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}
_EXPERT_RE = re.compile(
    r"(layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight"
)
_EXPERT_PART = {"gate_proj": ("w13", 0), "up_proj": ("w13", 1), "down_proj": ("w2", None)}


def param_target(config: ModelConfig, hf_name: str) -> tuple[str, ShardKey] | None:
    """(our parameter name, shard key) for a canonical HF tensor name.

    None for tensors the model does not store (rotary caches, a tied lm_head).
    """
    name = hf_name.removeprefix("model.")
    if "rotary_emb" in name or (name == "lm_head.weight" and config.tie_word_embeddings):
        return None
    if m := _EXPERT_RE.fullmatch(name):
        ours, part = _EXPERT_PART[m.group(3)]
        return f"{m.group(1)}.{ours}", (int(m.group(2)), part)
    module, _, kind = name.rpartition(".")
    parent, _, last = module.rpartition(".")
    if last in _FUSED:
        fused, part = _FUSED[last]
        return f"{parent}.{fused}.{kind}", part
    return name, None


def shard_view(config: ModelConfig, name: str, param: torch.Tensor, key: ShardKey) -> torch.Tensor:
    """The view of `param` (our parameter `name`) that the shard `key` fills."""
    if key is None:
        return param
    if isinstance(key, tuple):
        expert, part = key
        view = param[expert]
        if part is None:
            return view
        half = view.shape[0] // 2
        return view.narrow(0, part * half, half)
    if "qkv_proj" in name:
        sizes = [config.q_size, config.kv_size, config.kv_size]
    else:
        sizes = [param.shape[0] // 2] * 2
    return param.narrow(0, sum(sizes[:key]), sizes[key])


def expected_shards(name: str, param: torch.Tensor) -> list[ShardKey]:
    """Every shard key that must be loaded to fill parameter `name` completely."""
    if name.endswith("experts.w13"):
        return [(e, j) for e in range(param.shape[0]) for j in (0, 1)]
    if name.endswith("experts.w2"):
        return [(e, None) for e in range(param.shape[0])]
    if "qkv_proj" in name:
        return [0, 1, 2]
    if "gate_up_proj" in name:
        return [0, 1]
    return [None]
