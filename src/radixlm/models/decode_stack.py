"""Every decoder layer of a decode step in one native call (`native/decode_stack.cpp`).

A decode step at batch 1 spends about as long in the Python around each layer's
kernels (module calls, views, the K/V write) as in its elementwise kernels and
attention together. `DecodeStack` hands the whole layer loop to C++, which calls the
same kernels in the same order on the same values: the output is bit-identical to
the module path, so the exact float32 mode and every test of the modules hold for it.

It covers the plain decoder (`DecoderLayer` with a SiLU-gated `MLP`, no q/k norms,
windows, soft-capping or tensor parallelism) whose linears are `nn.Linear`,
`Int4Linear` or `Int8Linear`, and a forward it can run: a `PagedContext` decode batch
read in place by `paged_decode` (with or without shared runs), at most `max_rows`
tokens, in the pool's dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from radixlm.attention.base import AttentionContext
from radixlm.attention.paged import PagedContext
from radixlm.models.ops import Rope
from radixlm.models.quant import (
    INT8_OUTLIER_RATIO,
    INT8_OUTLIERS,
    Int4Linear,
    Int8Linear,
    WeightOnlyLinear,
)
from radixlm.native import kernels

DENSE, INT4, INT8, INT4_Q8 = 0, 1, 2, 3  # the kinds of decode_stack.cpp's linear specs
Spec = tuple[int, list[torch.Tensor], int, int, int, float]


def _spec(linear: nn.Module) -> Spec | None:
    """The native description of one linear, or None for a kind the stack lacks."""
    bias = [] if linear.bias is None else [linear.bias]
    if type(linear) is nn.Linear:
        return DENSE, [linear.weight, *bias], 0, 0, 0, 0.0
    if isinstance(linear, Int4Linear):
        int4 = [linear.packed, linear.scales_zeros, *bias]
        if linear.int8_activations:
            return INT4_Q8, int4, linear.group, 0, INT8_OUTLIERS, INT8_OUTLIER_RATIO
        return INT4, int4, linear.group, linear.native_rows(), 0, 0.0
    if isinstance(linear, Int8Linear):
        return INT8, [linear.qweight, linear.scale, *bias], 0, linear.native_rows(), 0, 0.0
    return None


class DecodeStack:
    """The native layer loop of one model; build with `DecodeStack.build`."""

    def __init__(self, native: object, max_rows: int, dtype: torch.dtype) -> None:
        self.native = native
        self.max_rows = max_rows  # the fewest rows any linear takes on its direct path
        self.dtype = dtype  # of the weights and of x

    @classmethod
    def build(cls, model: nn.Module) -> DecodeStack | None:
        """The stack of `model` (a `LlamaForCausalLM`), or None when a layer has a part it
        does not cover or the kernels are not built. It holds the weights' tensors as they
        are now: build again after replacing any parameter or buffer."""
        from radixlm.models.llama import MLP, DecoderLayer  # llama imports this module

        native = kernels()
        c = model.config
        if native is None or not hasattr(native, "DecodeStack") or model.tp is not None:
            return None
        if model.local_rotary is not None or c.attn_logit_softcap is not None:
            return None
        norms: list[torch.Tensor] = []
        specs: list[Spec] = []
        linears: list[nn.Module] = []
        for layer in model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            if type(layer) is not DecoderLayer or type(mlp) is not MLP or mlp.gelu:
                return None
            if attn.q_norm is not None or attn.window is not None:
                return None
            norms += [layer.input_layernorm.weight, layer.post_attention_layernorm.weight]
            linears += [attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj]
        for linear in linears:
            spec = _spec(linear)
            if spec is None:
                return None
            specs.append(spec)
        quant = [lin for lin in linears if isinstance(lin, WeightOnlyLinear)]
        if quant and norms[0].dtype != torch.bfloat16:  # the quantized kernels take bf16 x
            return None
        attn = model.layers[0].self_attn
        handle = native.DecodeStack(
            norms, specs, attn.num_heads, attn.num_kv_heads, attn.head_dim,
            model.layers[0].input_layernorm.eps, attn.scale,
        )  # fmt: skip
        max_rows = min((lin.direct_rows() for lin in quant), default=1 << 62)
        return cls(handle, max_rows, norms[0].dtype)

    def applies(self, x: torch.Tensor, ctx: AttentionContext) -> bool:
        """Whether `run` can take this forward: x [T, hidden] on the CPU in the weights'
        dtype, at most `max_rows` rows, and `ctx` a decode batch that `paged_decode` reads
        in place, over a pool of x's dtype."""
        if not isinstance(ctx, PagedContext) or x.device.type != "cpu" or x.dtype != self.dtype:
            return False
        meta = ctx.metadata
        if meta.decode is None or meta.shared_batches or ctx.pool.shape.dtype != x.dtype:
            return False
        return x.shape[0] <= self.max_rows

    def run(self, x: torch.Tensor, rope: Rope, ctx: PagedContext) -> torch.Tensor:
        """Every layer over x [T, hidden] (the residual stream, updated in place) as
        `DecoderLayer`s would run them; returns the last layer's output [T, hidden],
        which the caller adds into x. Call only where `applies` holds."""
        meta, pool = ctx.metadata, ctx.pool
        shared = list(meta.shared_runs) if meta.shared_runs is not None else []
        assert meta.decode is not None
        return self.native.run(
            x, rope[0], rope[1], pool.k_buffer, pool.v_buffer, meta.out_cache_loc,
            *meta.decode, shared,
        )  # fmt: skip
