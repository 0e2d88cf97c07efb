"""Quantize a model's weights as they stream in from the checkpoint.

`choose_quantization` turns `--quantization` into a mode for this file and
machine; `QuantizingLoader` takes the float32 tensors of the projection
weights out of the weight stream, quantizes each as it arrives (so no full
float copy of the model ever exists), and installs `Int8Linear` /
`Int4Linear` modules once every shard of a fused projection has arrived.

What is quantized: every projection of every layer (q/k/v, o, gate/up,
down, and each expert's gate/up and down in a mixture-of-experts layer) in the
chosen mode, and the token embedding (with the tied or untied
output projection) as int8 in both modes: int4 on the vocabulary projection
costs more accuracy than its share of the memory saves (docs/quantization.md).
Norms and biases stay in the compute dtype.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from radixlm.models.llama import LlamaForCausalLM
from radixlm.models.moe import MoEBlock, QuantizedExperts
from radixlm.models.quant import (
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    int4_supported,
    int8_activations_supported,
    quantize_int4,
    quantize_int8,
)

log = logging.getLogger(__name__)

_PROJECTIONS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
# GGUF storage type names -> the mode that keeps their precision.
_INT4_TYPES = {"Q4_0", "Q4_1", "Q4_K"}
_INT8_TYPES = {"Q8_0", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_K", "Q2_K", "Q3_K"}


def gguf_weight_mode(path: Path) -> str:
    """The mode that matches a GGUF file's projection weights: the most common storage type."""
    from radixlm.loader.gguf import projection_types

    counts = projection_types(path)
    if not counts:
        return "none"
    common = max(counts, key=lambda t: counts[t])
    return "int4" if common in _INT4_TYPES else "int8" if common in _INT8_TYPES else "none"


def choose_quantization(
    requested: str, path: Path, dtype: torch.dtype, device: torch.device
) -> tuple[str, str]:
    """(mode "none" | "int8" | "int4", why) for `--quantization requested` (one of
    QUANTIZATION_MODES, checked by LoadConfig) on this model.

    "auto" keeps a GGUF file's own precision (Q8_0 -> int8, Q4_x -> int4), and
    leaves float checkpoints alone. Quantized kernels need bfloat16 compute on
    the CPU: with float32 (the exact mode) "auto" dequantizes instead, and on
    CUDA every mode falls back to dense weights.
    """
    if requested == "none":
        return "none", "as asked"
    if device.type != "cpu":
        return "none", f"no weight-only kernels used on {device.type}: dense {dtype}"
    if requested != "auto":
        if dtype != torch.bfloat16:
            raise ValueError(f"quantization: {requested} needs --dtype bfloat16 (got {dtype})")
        return requested, "as asked"
    if path.suffix != ".gguf":
        return "none", "auto: a float checkpoint"
    if dtype != torch.bfloat16:
        return "none", f"auto: {dtype} compute runs dequantized weights"
    mode = gguf_weight_mode(path)
    return mode, f"auto: the GGUF file's own precision ({mode})"


def choose_activations(requested: str, mode: str, device: torch.device) -> tuple[str, str]:
    """(activations "bfloat16" | "int8", why) for `--activations requested` (one of
    ACTIVATION_MODES) with weight mode `mode` on `device`: what int4 layers multiply in,
    at every batch. int8 needs int4 weights on a CPU with the
    `int4_mm_q8` kernel (asked for without them: a ValueError naming `activations`);
    auto takes it where it can (docs/performance.md: ~1.3x faster prefill and faster
    large decode batches, a mean KL to float32 of 4.3e-3 against 3.8e-3 on SmolLM2)."""
    if requested == "bfloat16":
        return "bfloat16", "as asked"
    if mode != "int4":
        missing = f"int8 needs --quantization int4 (got {mode})"
    elif device.type != "cpu":
        missing = f"int8 runs on the CPU only (got {device.type})"
    elif not int8_activations_supported():
        missing = "int8 needs AVX512-VNNI, AVX512-VBMI and AVX512-BF16"
    else:
        return "int8", "as asked" if requested == "int8" else "auto: int4 weights, AVX512-VNNI"
    if requested == "int8":
        raise ValueError(f"activations: {missing}")
    return "bfloat16", f"auto: {missing}"


def set_activations(model: nn.Module, activations: str) -> None:
    """Make every int4 layer of `model` take `activations` ("bfloat16" or "int8")."""
    for module in model.modules():
        if isinstance(module, Int4Linear):
            module.int8_activations = activations == "int8"


class QuantizingLoader:
    """Splits a weight stream: projections are quantized here, the rest passes through.

    Use: `model.load_weights(q.filter(weights))`, then `q.install()`. Before
    that, `prepare()` drops the dense modules that will be replaced, so their
    parameters are never materialised.
    """

    def __init__(self, model: LlamaForCausalLM, mode: str, dtype: torch.dtype) -> None:
        self.model, self.mode, self.dtype = model, mode, dtype
        config = model.config
        moe_layers = {i for i, layer in enumerate(model.layers) if isinstance(layer.mlp, MoEBlock)}
        self.targets = {
            f"layers.{i}.{p}" for i in range(config.num_layers) for p in _PROJECTIONS
            if not (i in moe_layers and p.startswith("mlp."))
        }  # fmt: skip
        # stacked experts: module -> {(param, expert, part): quantized tensors}
        self.expert_targets = {f"layers.{i}.mlp.experts" for i in moe_layers}
        self._experts: dict[str, dict[tuple, tuple[torch.Tensor, ...]]] = defaultdict(dict)
        self.embed_name = "embed_tokens"
        self.head_name = None if config.tie_word_embeddings else "lm_head"
        self.targets |= {self.embed_name, *([self.head_name] if self.head_name else [])}
        self._shards: dict[str, dict[int | None, tuple[torch.Tensor, ...]]] = defaultdict(dict)
        self._bias: dict[str, dict[int | None, torch.Tensor]] = defaultdict(dict)

    def prepare(self) -> None:
        """Replace every target module (still on the meta device) with an empty placeholder."""
        for name in self.targets | self.expert_targets:
            self.model.set_submodule(name, nn.Module())
        if self.head_name is None:
            self.model.lm_head = nn.Module()

    def filter(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield the tensors the model loads itself; keep (quantized) the projection weights."""
        for hf_name, tensor in weights:
            target = self.model.param_target(hf_name)
            if target is None:
                continue
            name, shard = target
            module, _, kind = name.rpartition(".")
            if module in self.expert_targets:
                assert isinstance(shard, tuple)  # (expert, part)
                w = tensor.float()
                self._experts[module][(kind, *shard)] = self._quantize_expert(kind, w)
            elif module not in self.targets:
                yield hf_name, tensor
            elif kind == "bias":
                self._bias[module][shard] = tensor
            else:
                self._shards[module][shard] = self._quantize(module, tensor.float())

    def _quantize(self, module: str, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n, k = w.shape
        if self._mode_of(module, n, k) == "int4":
            return quantize_int4(w)
        return quantize_int8(w)

    def _quantize_expert(self, param: str, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n, k = w.shape  # one part of an expert: gate or up of w13 ([I, H]), or w2 ([H, I])
        rows = 2 * n if param == "w13" else n  # gate and up become one linear
        if self.mode == "int4" and int4_supported(rows, k):
            return quantize_int4(w)
        return quantize_int8(w)

    def _mode_of(self, module: str, n: int, k: int) -> str:
        if module in (self.embed_name, self.head_name) or self.mode == "int8":
            return "int8"
        full_n = n if module.endswith(("o_proj", "down_proj")) else self._fused_rows(module)
        return "int4" if int4_supported(full_n, k) else "int8"

    def _fused_rows(self, module: str) -> int:
        c = self.model.config
        return c.q_size + 2 * c.kv_size if "qkv" in module else 2 * c.intermediate_size

    def install(self) -> None:
        """Build the quantized modules from the collected shards; raise if any is missing."""
        for module in sorted(self.targets):
            parts = self._shards.get(module, {})
            expected = 3 if "qkv" in module else 2 if "gate_up" in module else 1
            if len(parts) != expected:
                raise ValueError(f"checkpoint is missing weights of {module!r}")
            ordered = [parts[k] for k in sorted(parts, key=lambda s: -1 if s is None else s)]
            merged = [torch.cat(cols, dim=0) for cols in zip(*ordered, strict=True)]
            biases = self._bias.get(module)
            bias = None
            if biases:
                bias = torch.cat([biases[k] for k in sorted(biases, key=lambda s: s or 0)])
            self.model.set_submodule(module, self._build(module, merged, bias))
        for module in sorted(self.expert_targets):
            self.model.set_submodule(module, self._build_experts(module))
        if self.head_name is None:
            embed = self.model.embed_tokens
            assert isinstance(embed, Int8Embedding)
            self.model.lm_head = embed.as_linear()

    def _build_experts(self, module: str) -> QuantizedExperts:
        """One quantized gate/up and down linear per expert, from the collected parts."""
        parts = self._experts.get(module, {})
        moe = self.model.config.moe
        assert moe is not None
        w13, w2 = [], []
        for e in range(moe.num_experts):
            keys = [("w13", e, 0), ("w13", e, 1), ("w2", e, None)]
            if any(k not in parts for k in keys):
                raise ValueError(f"checkpoint is missing weights of {module!r} expert {e}")
            gate_up = [torch.cat(cols, dim=0) for cols in zip(parts[keys[0]], parts[keys[1]],
                                                               strict=True)]  # fmt: skip
            w13.append(self._build(module, gate_up, None))
            w2.append(self._build(module, list(parts[keys[2]]), None))
        return QuantizedExperts(w13, w2)

    def _build(self, module: str, merged: list[torch.Tensor], bias: torch.Tensor | None):
        if module == self.embed_name:
            return Int8Embedding(merged[0], merged[1], self.dtype)
        if len(merged) == 3:
            return Int4Linear(merged[0], merged[1], merged[2], bias)
        return Int8Linear(merged[0], merged[1], bias)
