"""The shared decoder: Llama 2/3, Mistral, Qwen2/3, Gemma 2/3, Phi-3 and the MoE families.

RMSNorm, rotary embeddings, grouped-query attention, a gated MLP. q/k/v and
gate/up projections are fused into one matmul each (`models.weights` maps
checkpoint names onto them). Each family is a small delta read from the
`ModelConfig` (see `models.registry`): q/k norms (Qwen3, Gemma 3), sandwich
norms, embedding scale, GeGLU, soft-capping and sliding-window layers
(Gemma), a local rope base (Gemma 3), LongRoPE (Phi-3), and mixture-of-experts
MLPs (`models.moe`).

The model sees a flat batch: `input_ids` [T] and `positions` [T] for the new
tokens of every sequence, and an `AttentionContext` that says where each
sequence's K/V live. It knows nothing about requests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from radixlm.attention.base import AttentionContext
from radixlm.config import ModelConfig
from radixlm.distributed.group import TPGroup
from radixlm.models import weights as W
from radixlm.models.decode_stack import DecodeStack
from radixlm.models.fast_module import FastModule
from radixlm.models.moe import MoEBlock
from radixlm.models.ops import (
    Rope,
    add_rms_norm,
    apply_rope_,
    refine_top_logits,
    rms_norm,
    rope_tables,
    silu_mul,
)
from radixlm.models.parallel import RowParallelLinear, VocabParallelEmbedding, VocabParallelHead
from radixlm.models.rope import Rotary, rope_inv_freq

__all__ = ["LlamaForCausalLM", "rope_inv_freq"]


class RMSNorm(FastModule):
    """weight * x / rms(x). Gemma's (1 + weight) form is folded into the weight at load."""

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


class Attention(FastModule):
    def __init__(self, config: ModelConfig, layer_id: int, tp: TPGroup | None = None) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_size, self.kv_size = config.q_size, config.kv_size
        self.scale = (config.query_pre_attn_scalar or config.head_dim) ** -0.5
        self.window = config.layer_window(layer_id)
        self.softcap = config.attn_logit_softcap
        self.qkv_proj = nn.Linear(
            config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.attention_bias
        )
        self.o_proj = (  # tensor parallel: this rank's heads in, all-reduced out
            RowParallelLinear(self.q_size, config.hidden_size, tp)
            if tp is not None
            else nn.Linear(self.q_size, config.hidden_size, bias=False)
        )
        self.q_norm = self.k_norm = None
        if config.qk_norm:  # per head, over head_dim, before rotary
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope: Rope, ctx: AttentionContext) -> torch.Tensor:
        t = x.shape[0]
        h, hkv = self.num_heads, self.num_kv_heads
        qkv = self.qkv_proj(x).view(t, h + 2 * hkv, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:  # over [T * heads, D] rows
            d = self.head_dim
            qkv[:, :h] = self.q_norm(qkv[:, :h].reshape(-1, d)).view(t, h, d)
            qkv[:, h : h + hkv] = self.k_norm(qkv[:, h : h + hkv].reshape(-1, d)).view(t, hkv, d)
        apply_rope_(qkv, rope[0], rope[1], h + hkv)  # q and k, in place
        q, k, v = qkv.split([h, hkv, hkv], dim=1)
        out = ctx.attend(self.layer_id, q, k, v, self.scale, self.window, self.softcap)
        return self.o_proj(out.reshape(t, self.q_size))  # out: [T, H, D]


class MLP(FastModule):
    def __init__(
        self, config: ModelConfig, intermediate_size: int | None = None, tp: TPGroup | None = None
    ) -> None:
        super().__init__()
        inter = intermediate_size or config.intermediate_size
        self.gelu = config.hidden_act == "gelu_tanh"
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * inter, bias=False)
        self.down_proj = (
            RowParallelLinear(inter, config.hidden_size, tp)
            if tp is not None
            else nn.Linear(inter, config.hidden_size, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if self.gelu:  # GeGLU
            gate, up = gate_up.chunk(2, dim=-1)
            return self.down_proj(F.gelu(gate, approximate="tanh") * up)
        return self.down_proj(silu_mul(gate_up))


def _make_mlp(config: ModelConfig, layer_id: int, tp: TPGroup | None = None) -> nn.Module:
    moe = config.moe
    if moe is None or layer_id in moe.dense_layers:
        return MLP(config, tp=tp)
    return MoEBlock(config.hidden_size, moe)


class DecoderLayer(FastModule):
    def __init__(self, config: ModelConfig, layer_id: int, tp: TPGroup | None = None) -> None:
        super().__init__()
        # the sliding layers' rope (Gemma 3's local base), whatever their window
        types = config.layer_types
        self.sliding = types[layer_id] == "sliding" if types else bool(config.sliding_window)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_id, tp)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = _make_mlp(config, layer_id, tp)

    def forward(
        self, x: torch.Tensor, delta: torch.Tensor | None, rope: Rope, ctx: AttentionContext
    ) -> torch.Tensor:
        """Add the previous layer's output `delta` into the residual stream x (in place),
        and return this layer's output; the caller adds it (into the next layer's norm)."""
        norm = self.input_layernorm
        h = norm(x) if delta is None else norm.add_forward(x, delta)
        h = self.post_attention_layernorm.add_forward(x, self.self_attn(h, rope, ctx))
        return self.mlp(h)


class SandwichDecoderLayer(DecoderLayer):
    """Gemma 2/3: the attention and MLP outputs are normalised too, before the residual add.

    Here `post_attention_layernorm` normalises the attention output and
    `pre_feedforward_layernorm` the MLP input (the checkpoint's names).
    """

    def __init__(self, config: ModelConfig, layer_id: int, tp: TPGroup | None = None) -> None:
        super().__init__(config, layer_id, tp)
        self.pre_feedforward_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_feedforward_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, delta: torch.Tensor | None, rope: Rope, ctx: AttentionContext
    ) -> torch.Tensor:
        norm = self.input_layernorm
        h = norm(x) if delta is None else norm.add_forward(x, delta)
        attn = self.post_attention_layernorm(self.self_attn(h, rope, ctx))
        h = self.pre_feedforward_layernorm.add_forward(x, attn)
        return self.post_feedforward_layernorm(self.mlp(h))


class LlamaForCausalLM(FastModule):
    """The decoder of every supported family (the name is kept from its first one)."""

    def __init__(self, config: ModelConfig, tp: TPGroup | None = None) -> None:
        """`tp`: this rank's tensor-parallel group; `config` is then the per-rank one
        (`models.parallel.local_config`) and the weights are this rank's slices."""
        super().__init__()
        self.config, self.tp = config, tp
        layer_cls = SandwichDecoderLayer if config.sandwich_norms else DecoderLayer
        v, hidden = config.vocab_size, config.hidden_size
        self.embed_tokens = VocabParallelEmbedding(v, hidden, tp) if tp else nn.Embedding(v, hidden)
        self.layers = nn.ModuleList(layer_cls(config, i, tp) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = (
            VocabParallelHead(hidden, v, tp) if tp else nn.Linear(hidden, v, bias=False)
        )
        self._stack: DecodeStack | bool | None = None  # built on first use; False: none fits
        self.tie_weights()
        device = self.embed_tokens.weight.device
        self.init_rotary(torch.device("cpu") if device.type == "meta" else device)

    def init_rotary(self, device: torch.device) -> None:
        """(Re)build the rotary tables on `device`: call after moving the model."""
        c = self.config
        self.rotary = Rotary(c.head_dim, c.rope_theta, c.rope_scaling, device)
        self.local_rotary = None
        if c.rope_local_theta is not None:  # Gemma 3's sliding layers: own base, no scaling
            self.local_rotary = Rotary(c.head_dim, c.rope_local_theta, None, device)

    @property
    def inv_freq(self) -> torch.Tensor:
        """The full-attention layers' inverse rotary frequencies [head_dim // 2] (float32)."""
        return self.rotary.inv_freq

    def tie_weights(self) -> None:
        """Share the output projection with the embedding when the config says so.

        Call again after anything that re-materialises parameters (e.g. `to_empty`).
        """
        self._stack = None  # it holds the old tensors
        if self.config.tie_word_embeddings and isinstance(self.lm_head, nn.Linear):
            self.lm_head.weight = self.embed_tokens.weight

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        ctx: AttentionContext,
        logits_indices: torch.Tensor | None = None,
        native_layers: bool = True,
    ) -> torch.Tensor:
        """Run the flat batch; return float32 logits [N, vocab].

        input_ids, positions: [T] int64. `logits_indices` selects which of the T
        rows get logits (e.g. the last token of each sequence); None means all.
        With `native_layers`, a decode batch the native layer loop covers runs through
        it (`models.decode_stack`: the same values as the modules, faster).
        """
        c = self.config
        x = self.embed_tokens(input_ids)  # [T, hidden]
        if c.embed_scale != 1.0:
            x = x * torch.tensor(c.embed_scale, dtype=x.dtype)
        lens = ctx.extend_lens
        rope = rope_tables(*self.rotary.cos_sin(positions, lens, x.dtype), x)
        local = rope  # the sliding layers' tables
        if self.local_rotary is not None:
            local = rope_tables(*self.local_rotary.cos_sin(positions, lens, x.dtype), x)
        delta = None
        stack = self._decode_stack(x, ctx) if native_layers else None
        if stack is not None:
            delta = stack.run(x, rope, ctx)
        else:
            for layer in self.layers:
                delta = layer(x, delta, local if layer.sliding else rope, ctx)
        if delta is not None:
            x.add_(delta)
        if logits_indices is not None:
            x = x[logits_indices]
        h = self.norm(x)
        logits = self.lm_head(h).float()
        if h.dtype != torch.float32:  # bf16 rounding of the logits would tie the top tokens
            logits = refine_top_logits(logits, h, self._head_rows)
        if c.final_logit_softcap:  # monotonic: the refined top stays on top
            cap = c.final_logit_softcap
            logits = torch.tanh(logits / cap) * cap
        return logits

    def _head_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows `idx` of the output projection's weight in float32 ([*idx.shape, hidden])."""
        head = self.lm_head
        if isinstance(head, nn.Linear):
            return head.weight[idx].float()
        return head.rows(idx)

    def param_target(self, hf_name: str) -> tuple[str, W.ShardKey] | None:
        """(our parameter name, shard key) for a canonical HF tensor name; see models.weights."""
        return W.param_target(self.config, hf_name)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors into the model (fusing and stacking); check completeness.

        Norm weights get the config's `norm_offset` added (Gemma's 1 + weight).
        Modules replaced by quantized ones (`loader.quantize`) have no parameters
        and are neither filled nor checked here.
        """
        params = dict(self.named_parameters(remove_duplicate=False))
        norms = {f"{n}.weight" for n, m in self.named_modules() if isinstance(m, RMSNorm)}
        loaded: set[tuple[str, W.ShardKey]] = set()
        for hf_name, tensor in weights:
            target_name = self.param_target(hf_name)
            if target_name is None:
                continue
            name, shard = target_name
            if name not in params:
                raise ValueError(f"unexpected weight {hf_name!r} for this model")
            target = W.shard_view(self.config, name, params[name].data, shard)
            if target.shape != tensor.shape:
                raise ValueError(
                    f"weight {hf_name!r} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(target.shape)}"
                )
            if name in norms and self.config.norm_offset:
                tensor = tensor.float() + self.config.norm_offset
            target.copy_(tensor)
            loaded.add((name, shard))
        self._check_complete(loaded)

    def _check_complete(self, loaded: set[tuple[str, W.ShardKey]]) -> None:
        missing = []
        for name, p in self.named_parameters():
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue
            missing += [(name, k) for k in W.expected_shards(name, p) if (name, k) not in loaded]
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

    def active_memory_bytes(self) -> int:
        """Bytes of the weights one token reads: all of them, less the experts it is not routed
        to (equal to `memory_bytes` for a dense model)."""
        idle = 0
        for m in self.modules():
            if isinstance(m, MoEBlock):
                total, active = m.expert_bytes()
                idle += total - active
        return self.memory_bytes() - idle

    def _decode_stack(self, x: torch.Tensor, ctx: AttentionContext) -> DecodeStack | None:
        """The native layer loop when it covers this model and can run this forward."""
        if self._stack is None:
            self._stack = DecodeStack.build(self) or False
        stack = self._stack
        return stack if isinstance(stack, DecodeStack) and stack.applies(x, ctx) else None

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        self._stack = None  # `.to()` and friends replace the tensors it holds
        return super()._apply(fn, recurse)
