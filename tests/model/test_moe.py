"""Mixture-of-experts layers: routing as transformers, batched experts, memory accounting."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
import torch
from family_checks import TOL, load_pair
from helpers.reference import full_logits, tokens
from torch.utils._python_dispatch import TorchDispatchMode

from radixlm.config import LoadConfig
from radixlm.loader import load_model
from radixlm.models.moe import ExpertGroup, MoEBlock, QuantizedExperts

MOE = ["mixtral", "qwen2_moe", "qwen3_moe"]


class _CountOps(TorchDispatchMode):
    """Counts every aten operation run inside the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("variant", MOE)
def test_routing_picks_transformers_top_k_experts(tiny_model_factory, variant):
    ours, ref = load_pair(tiny_model_factory(variant))
    x = torch.randn(256, ours.config.hidden_size, generator=torch.Generator().manual_seed(1))
    for layer in (0, ours.config.num_layers - 1):
        block = ours.model.layers[layer].mlp
        if not isinstance(block, MoEBlock):
            continue
        weights, ids = block.gate(x)
        with torch.no_grad():
            _, ref_weights, ref_ids = ref.model.layers[layer].mlp.gate(x)
        assert torch.equal(ids, ref_ids)  # the same experts, in the same order
        torch.testing.assert_close(weights, ref_weights.float(), rtol=0, atol=1e-6)
    assert ours.config.moe is not None
    if ours.config.moe.norm_topk_prob:
        torch.testing.assert_close(weights.sum(-1), torch.ones(256), rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", MOE)
@pytest.mark.parametrize("n", [1, 2, 64])  # decode (only the experts hit), all experts
def test_moe_block_output_equals_transformers(tiny_model_factory, variant, n):
    ours, ref = load_pair(tiny_model_factory(variant))
    x = torch.randn(1, n, ours.config.hidden_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref.model.layers[0].mlp(x)[0]
        got = ours.model.layers[0].mlp(x[0])
    assert (got - expected).abs().max().item() <= TOL


def _ops_of_forward(loaded, n: int) -> Counter[str]:
    ids = tokens(n, seed=n, vocab=loaded.config.vocab_size)
    with _CountOps() as mode:
        full_logits(loaded, ids)
    return mode.ops


def test_expert_work_does_not_grow_with_the_tokens(tiny_model_factory):
    """A forward of 256 tokens runs the same operations as one of 64 (one matmul pair per
    expert, none per token); a decode-sized forward runs one pair per expert it hits."""
    ours, _ = load_pair(tiny_model_factory("qwen3_moe"))
    moe = ours.config.moe
    assert moe is not None
    many = _ops_of_forward(ours, 64)
    assert many == _ops_of_forward(ours, 256)
    few = _ops_of_forward(ours, moe.num_experts // moe.top_k)  # pairs == experts
    one = _ops_of_forward(ours, 1)
    assert one["aten.linear.default"] < few["aten.linear.default"] <= many["aten.linear.default"]
    # the expert matmuls: one gate/up and one down per expert per MoE layer
    moe_layers = sum(isinstance(layer.mlp, MoEBlock) for layer in ours.model.layers)
    assert moe_layers == 2
    dense_linears = ours.config.num_layers * 2 + 1 + 2  # qkv + o per layer, head, dense MLP
    matmuls = many["aten.mm.default"] + many["aten.addmm.default"]
    assert matmuls <= dense_linears + moe_layers * (1 + 2 * moe.num_experts)


def test_a_group_of_some_experts_adds_only_its_own(tiny_model_factory):
    """Experts split over two groups (two ranks, later) sum to the whole layer's output."""
    ours, _ = load_pair(tiny_model_factory("mixtral"))
    block = ours.model.layers[0].mlp
    moe = ours.config.moe
    assert isinstance(block, MoEBlock) and moe is not None
    x = torch.randn(32, ours.config.hidden_size, generator=torch.Generator().manual_seed(3))
    weights, ids = block.gate(x)
    halves = []
    for first, count in ((0, 2), (2, moe.num_experts - 2)):
        group = ExpertGroup(ours.config.hidden_size, moe, first, count)
        group.w13.data.copy_(block.experts.w13[first : first + count])
        group.w2.data.copy_(block.experts.w2[first : first + count])
        halves.append(group(x, weights, ids))
    torch.testing.assert_close(halves[0] + halves[1], block.experts(x, weights, ids))


def test_active_and_total_weight_memory_logged(tiny_model_factory, caplog):
    path = tiny_model_factory("qwen3_moe")
    with caplog.at_level(logging.INFO, logger="radixlm.loader"):
        loaded = load_model(LoadConfig(model=str(path), dtype="float32"), progress=False)
    moe = loaded.config.moe
    assert moe is not None
    h = loaded.config.hidden_size
    per_layer = moe.num_experts * 3 * moe.intermediate_size * h * 4  # float32 experts
    idle = 2 * per_layer * (moe.num_experts - moe.top_k) // moe.num_experts
    assert loaded.model.active_memory_bytes() == loaded.memory_bytes - idle
    assert "active per token" in caplog.text


@pytest.mark.parametrize("variant", MOE)
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_experts_stay_close(tiny_model_factory, variant, mode):
    """--quantization int8/int4 quantizes every expert (one linear pair each): less memory,
    the same routed inputs give close expert outputs, and most tokens' logits stay close.

    A token whose top-k experts nearly tie may switch experts under any rounding (bf16
    alone does it on qwen3_moe), so the whole-model check is on the median token.
    """
    path = tiny_model_factory(variant)
    exact = load_model(LoadConfig(model=str(path), dtype="float32"), progress=False)
    dense = load_model(LoadConfig(model=str(path), dtype="bfloat16", quantization="none"),
                       progress=False)  # fmt: skip
    quant = load_model(LoadConfig(model=str(path), dtype="bfloat16", quantization=mode),
                       progress=False)  # fmt: skip
    assert quant.quantization == mode
    experts = quant.model.layers[0].mlp.experts
    assert isinstance(experts, QuantizedExperts)
    assert quant.memory_bytes < exact.memory_bytes * (0.3 if mode == "int8" else 0.25)
    assert quant.model.active_memory_bytes() < quant.memory_bytes
    bound = {"int8": 0.04, "int4": 0.3}[mode]
    for n in (1, 40):  # a decode-sized batch (most experts idle) and a prefill
        x = torch.randn(n, exact.config.hidden_size, generator=torch.Generator().manual_seed(n))
        x = x.to(torch.bfloat16)
        block = dense.model.layers[0].mlp
        weights, ids = block.gate(x)
        want = block.experts(x, weights, ids).float()
        got = experts(x, weights, ids).float()
        assert (got - want).abs().max().item() < bound * want.abs().max().item()
    ids = tokens(24, seed=4, vocab=exact.config.vocab_size)
    a, b = full_logits(exact, ids), full_logits(quant, ids)
    per_token = (a - b).abs().amax(-1) / a.abs().max()
    assert per_token.median().item() < bound


def test_bfloat16_moe_stays_close(tiny_model_factory):
    path = tiny_model_factory("mixtral")
    auto = load_model(LoadConfig(model=str(path), dtype="bfloat16"), progress=False)
    assert auto.quantization == "none" and auto.dtype == torch.bfloat16
    exact = load_model(LoadConfig(model=str(path), dtype="float32"), progress=False)
    ids = tokens(24, seed=4, vocab=exact.config.vocab_size)
    a, b = full_logits(exact, ids), full_logits(auto, ids)
    assert (a - b).abs().max().item() < 0.05 * a.abs().max().item()  # bf16 rounding only
