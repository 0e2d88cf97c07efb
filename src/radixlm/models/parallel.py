"""Megatron-style sharded layers and the per-rank slicing of checkpoint tensors.

Column-parallel (`qkv_proj`, `gate_up_proj`): each rank holds a slice of the
output features and no communication is needed. Row-parallel (`o_proj`,
`down_proj`): each rank holds the matching slice of the input features; the
partial outputs are summed with an all-reduce. The embedding and the output
head are vocab-parallel: rank r holds rows [r * Vp, (r + 1) * Vp) of the
(padded) vocabulary, Vp = ceil(V / size); the embedding all-reduces (rows not
owned contribute zeros) and the head all-gathers the logits.

Attention heads are split evenly; KV heads too when there are at least as many
as ranks, otherwise each rank keeps the one KV head its query heads use (a
replica), so every rank's KV pool holds the same slots for its own heads.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from radixlm.config import ModelConfig
from radixlm.distributed.group import TPGroup


class RowParallelLinear(nn.Linear):
    """A linear over this rank's slice of the input features; the output is all-reduced."""

    def __init__(self, in_local: int, out_features: int, tp: TPGroup) -> None:
        super().__init__(in_local, out_features, bias=False)
        self.tp = tp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(super().forward(x))


class VocabParallelEmbedding(nn.Embedding):
    """Rows [rank * Vp, (rank + 1) * Vp) of the embedding; the lookup is all-reduced."""

    def __init__(self, vocab_size: int, hidden: int, tp: TPGroup) -> None:
        self.part = -(-vocab_size // tp.size)  # Vp, the padded rows per rank
        super().__init__(self.part, hidden)
        self.tp, self.start = tp, tp.rank * self.part

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        mine = (local >= 0) & (local < self.part)
        x = F.embedding(local.clamp(0, self.part - 1), self.weight)
        x = x * mine.unsqueeze(-1).to(x.dtype)  # [T, hidden], zeros for rows owned elsewhere
        return self.tp.all_reduce(x)


class VocabParallelHead(nn.Linear):
    """This rank's Vp rows of the output head; forward returns the gathered [N, V] logits."""

    def __init__(self, hidden: int, vocab_size: int, tp: TPGroup) -> None:
        super().__init__(hidden, -(-vocab_size // tp.size), bias=False)
        self.tp, self.vocab_size = tp, vocab_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tp.all_gather_last(super().forward(x))[..., : self.vocab_size]


def local_config(config: ModelConfig, tp: TPGroup) -> ModelConfig:
    """The per-rank dimensions: query heads, KV heads (>= 1) and MLP width divided by size.

    Raises ValueError when the model cannot be split over `tp.size` ranks.
    """
    n = tp.size
    if config.moe is not None:
        raise ValueError("tensor parallelism does not support mixture-of-experts models yet")
    if config.num_heads % n or config.intermediate_size % n:
        raise ValueError(
            f"--tp {n} must divide num_heads ({config.num_heads}) and "
            f"intermediate_size ({config.intermediate_size})"
        )
    kv = config.num_kv_heads
    if (kv % n if kv >= n else n % kv):
        raise ValueError(f"--tp {n} and num_kv_heads {kv}: one must divide the other")
    return dataclasses.replace(
        config,
        num_heads=config.num_heads // n,
        num_kv_heads=max(kv // n, 1),
        intermediate_size=config.intermediate_size // n,
    )


def _rows(t: torch.Tensor, start: int, count: int, dim: int = 0) -> torch.Tensor:
    return t.narrow(dim, start, count)


def shard_tensor(config: ModelConfig, tp: TPGroup, name: str, t: torch.Tensor) -> torch.Tensor:
    """This rank's slice of the canonical HF tensor `name` of the full model `config`.

    Tensors that every rank keeps whole (norms) are returned as they are.
    """
    r, n, d = tp.rank, tp.size, config.head_dim
    last = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else name
    if last == "q_proj":
        h = config.num_heads // n
        return _rows(t, r * h * d, h * d)
    if last in ("k_proj", "v_proj"):
        kv = config.num_kv_heads
        if kv >= n:
            return _rows(t, r * (kv // n) * d, (kv // n) * d)
        return _rows(t, (r * kv // n) * d, d)  # the KV head this rank's query heads share
    if last == "o_proj":
        h = config.num_heads // n
        return _rows(t, r * h * d, h * d, dim=1)
    inter = config.intermediate_size // n
    if last in ("gate_proj", "up_proj"):
        return _rows(t, r * inter, inter)
    if last == "down_proj":
        return _rows(t, r * inter, inter, dim=1)
    if name.endswith(("embed_tokens.weight", "lm_head.weight")):
        part = -(-config.vocab_size // n)
        out = t.new_zeros(part, t.shape[1])  # the padded rows past the vocabulary stay zero
        rows = t[r * part : (r + 1) * part]
        out[: rows.shape[0]] = rows
        return out
    return t


def shard_weights(config: ModelConfig, tp: TPGroup, weights):
    """Yield (name, this rank's slice) for a stream of (canonical HF name, full tensor)."""
    for name, t in weights:
        yield name, shard_tensor(config, tp, name, t).contiguous()
