"""One decoder for the Llama family: Llama 2/3, Mistral, Qwen2 and SmolLM2.

RMSNorm, rotary embeddings (with linear and llama3 frequency scaling),
grouped-query attention, SwiGLU MLP. q/k/v and gate/up projections are fused
into one matmul each; `load_weights` maps Hugging Face tensor names onto them.

The model sees a flat batch: `input_ids` [T] and `positions` [T] for the new
tokens of every sequence, and an `AttentionContext` that says where each
sequence's K/V live. It knows nothing about requests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from radixlm.attention.base import AttentionContext
from radixlm.config import ModelConfig, RopeScaling
from radixlm.models.ops import (
    add_rms_norm,
    apply_rope_,
    refine_top_logits,
    rms_norm,
    silu_mul,
)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32, scale in the model dtype (as the reference implementation).
        return rms_norm(x, self.weight, self.eps)

    def add_forward(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """x += delta in place (the residual stream); return the norm of the sum."""
        return add_rms_norm(x, delta, self.weight, self.eps)


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2] (float32), with the configured scaling applied."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv_freq
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    # llama3: keep high frequencies, divide low ones by `factor`, blend the band between.
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    in_band = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(in_band, blended, scaled)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_size, self.kv_size = config.q_size, config.kv_size
        self.scale = config.head_dim**-0.5
        self.qkv_proj = nn.Linear(
            config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.attention_bias
        )
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx: AttentionContext
    ) -> torch.Tensor:
        t = x.shape[0]
        qkv = self.qkv_proj(x).view(t, self.num_heads + 2 * self.num_kv_heads, self.head_dim)
        apply_rope_(qkv, cos, sin, self.num_heads + self.num_kv_heads)  # q and k, in place
        q, k, v = qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=1)
        out = ctx.attend(self.layer_id, q, k, v, self.scale)  # [T, H, D]
        return self.o_proj(out.reshape(t, self.q_size))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_id)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        delta: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        ctx: AttentionContext,
    ) -> torch.Tensor:
        """Add the previous layer's output `delta` into the residual stream x (in place),
        and return this layer's output; the caller adds it (into the next layer's norm)."""
        norm = self.input_layernorm
        h = norm(x) if delta is None else norm.add_forward(x, delta)
        h = self.post_attention_layernorm.add_forward(x, self.self_attn(h, cos, sin, ctx))
        return self.mlp(h)


# HF name suffix -> (our parameter suffix, shard index) for the fused projections.
_STACKED = {
    "self_attn.q_proj": ("self_attn.qkv_proj", 0),
    "self_attn.k_proj": ("self_attn.qkv_proj", 1),
    "self_attn.v_proj": ("self_attn.qkv_proj", 2),
    "mlp.gate_proj": ("mlp.gate_up_proj", 0),
    "mlp.up_proj": ("mlp.gate_up_proj", 1),
}


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()
        inv_freq = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def tie_weights(self) -> None:
        """Share the output projection with the embedding when the config says so.

        Call again after anything that re-materialises parameters (e.g. `to_empty`).
        """
        if self.config.tie_word_embeddings and isinstance(self.lm_head, nn.Linear):
            self.lm_head.weight = self.embed_tokens.weight

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        ctx: AttentionContext,
        logits_indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the flat batch; return float32 logits [N, vocab].

        input_ids, positions: [T] int64. `logits_indices` selects which of the T
        rows get logits (e.g. the last token of each sequence); None means all.
        """
        x = self.embed_tokens(input_ids)  # [T, hidden]
        freqs = positions.to(torch.float32).unsqueeze(1) * self.inv_freq.unsqueeze(0)  # [T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)  # [T, 1, D]
        half = freqs.shape[-1]
        sin = emb.sin()
        sin[..., :half].neg_()  # signed: see ops.apply_rope_
        cos, sin = emb.cos().to(x.dtype), sin.to(x.dtype)
        delta = None
        for layer in self.layers:
            delta = layer(x, delta, cos, sin, ctx)
        if delta is not None:
            x.add_(delta)
        if logits_indices is not None:
            x = x[logits_indices]
        h = self.norm(x)
        logits = self.lm_head(h).float()
        if h.dtype != torch.float32:  # bf16 rounding of the logits would tie the top tokens
            logits = refine_top_logits(logits, h, self._head_rows)
        return logits

    def _head_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows `idx` of the output projection's weight in float32 ([*idx.shape, hidden])."""
        head = self.lm_head
        if isinstance(head, nn.Linear):
            return head.weight[idx].float()
        return head.rows(idx)

    def param_target(self, hf_name: str) -> tuple[str, int | None] | None:
        """(our parameter name, shard index within a fused projection) for an HF tensor name.

        None for tensors the model does not store (rotary caches, a tied lm_head).
        """
        name = hf_name.removeprefix("model.")
        if "rotary_emb" in name or (name == "lm_head.weight" and self.config.tie_word_embeddings):
            return None
        for hf_part, (ours, idx) in _STACKED.items():
            if f".{hf_part}." in f".{name}":
                return name.replace(hf_part, ours), idx
        return name, None

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors into the model (fusing q/k/v and gate/up); check completeness.

        Modules replaced by quantized ones (`loader.quantize`) have no parameters
        and are neither filled nor checked here.
        """
        params = dict(self.named_parameters(remove_duplicate=False))
        loaded: set[str] = set()
        for hf_name, tensor in weights:
            target_name = self.param_target(hf_name)
            if target_name is None:
                continue
            name, shard = target_name
            if name not in params:
                raise ValueError(f"unexpected weight {hf_name!r} for this model")
            target = params[name].data
            if shard is not None:
                target = target.narrow(0, *self.shard_range(name, shard))
            if target.shape != tensor.shape:
                raise ValueError(
                    f"weight {hf_name!r} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(target.shape)}"
                )
            target.copy_(tensor)
            loaded.add(f"{name}#{shard}")
        self._check_complete(loaded)

    def shard_range(self, name: str, shard: int) -> tuple[int, int]:
        """(first row, rows) of shard `shard` in the fused projection `name`."""
        c = self.config
        if "qkv_proj" in name:
            sizes = [c.q_size, c.kv_size, c.kv_size]
        else:
            sizes = [c.intermediate_size, c.intermediate_size]
        return sum(sizes[:shard]), sizes[shard]

    def _check_complete(self, loaded: set[str]) -> None:
        missing = []
        for name, _ in self.named_parameters():
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue
            if "qkv_proj" in name:
                keys = [f"{name}#{i}" for i in range(3)]
            elif "gate_up_proj" in name:
                keys = [f"{name}#{i}" for i in range(2)]
            else:
                keys = [f"{name}#None"]
            missing += [k for k in keys if k not in loaded]
        if missing:
            raise ValueError(f"checkpoint is missing {len(missing)} weights, e.g. {missing[:3]}")

    def memory_bytes(self) -> int:
        """Bytes of the weights (parameters and quantized buffers), shared storage counted once.

        Non-persistent buffers (the rotary frequencies) are not weights and not counted.
        """
        seen: dict[int, int] = {}
        for t in self.state_dict(keep_vars=True).values():
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return sum(seen.values())
