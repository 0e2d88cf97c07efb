"""Reference attention and model logits for checking the paged backends."""

from __future__ import annotations

import torch

from radixlm.attention.dense import DenseContext, DenseKVCache
from radixlm.loader import LoadedModel


def reference_attention(q, k, v, prefix_len, scale):
    """q [n, H, D] over k, v [p + n, Hkv, D]: bottom-right causal, GQA by repeating heads."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1).double()
    v = v.repeat_interleave(groups, dim=1).double()
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) * scale
    n, total = q.shape[0], k.shape[0]
    allowed = torch.arange(total).unsqueeze(0) <= torch.arange(n).unsqueeze(1) + prefix_len
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).float()


def tokens(n: int, seed: int, vocab: int) -> list[int]:
    """n reproducible random token ids in [3, vocab)."""
    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def full_logits(loaded: LoadedModel, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab] logits of one dense forward over the whole sequence."""
    cache = DenseKVCache(loaded.config, len(ids), loaded.dtype, loaded.device)
    ctx = DenseContext([cache], [len(ids)])
    return loaded.model(torch.tensor(ids), torch.arange(len(ids)), ctx)
