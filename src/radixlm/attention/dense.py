"""A contiguous KV cache per sequence and the attention context over it.

This is the simple backend: each sequence owns preallocated K/V tensors and
its tokens sit at positions [0, length). The shared, paged KV pool replaces it
for serving; this one stays for single-sequence generation and as a reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from radixlm.attention.base import AttentionContext
from radixlm.attention.window import masked_attention, visible
from radixlm.config import ModelConfig


class DenseKVCache:
    """K/V of one sequence: per layer `[capacity, num_kv_heads, head_dim]`, filled to `length`."""

    def __init__(
        self, config: ModelConfig, capacity: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        shape = (config.num_layers, capacity, config.num_kv_heads, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.capacity = capacity
        self.length = 0  # tokens whose K/V are stored (advanced by DenseContext.commit)


class DenseContext(AttentionContext):
    """One forward over several sequences, each with its own `DenseKVCache`.

    The flat batch holds `extend_lens[i]` new tokens for `caches[i]`, which
    already stores `caches[i].length` tokens. Call `commit()` after the forward
    to advance every cache's length past the new tokens.
    """

    def __init__(self, caches: list[DenseKVCache], extend_lens: list[int]) -> None:
        if len(caches) != len(extend_lens):
            raise ValueError("one extend length per cache")
        for cache, n in zip(caches, extend_lens, strict=True):
            if cache.length + n > cache.capacity:
                raise ValueError(f"sequence of {cache.length + n} tokens exceeds cache capacity")
        self.caches = caches
        self._extend_lens = list(extend_lens)

    @property
    def extend_lens(self) -> list[int]:
        return self._extend_lens

    def attend(
        self,
        layer_id: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        scale: float,
        window: int | None = None,
        softcap: float | None = None,
    ) -> torch.Tensor:
        outs = []
        start = 0
        for cache, n in zip(self.caches, self._extend_lens, strict=True):
            p = cache.length
            cache.k[layer_id, p : p + n] = k[start : start + n]
            cache.v[layer_id, p : p + n] = v[start : start + n]
            # [1, H, n, D] against [1, Hkv, p+n, D]
            qs = q[start : start + n].transpose(0, 1).unsqueeze(0)
            ks = cache.k[layer_id, : p + n].transpose(0, 1).unsqueeze(0)
            vs = cache.v[layer_id, : p + n].transpose(0, 1).unsqueeze(0)
            if window is None and softcap is None:
                o = _causal_sdpa(qs, ks, vs, p, scale)
            else:  # key l visible to query p + j iff 0 <= p + j - l (< window)
                dev = q.device
                mask = visible(torch.arange(p, p + n, device=dev), torch.arange(p + n, device=dev),
                               window)  # fmt: skip
                o = masked_attention(qs, ks, vs, mask.unsqueeze(0), scale, softcap)
            outs.append(o[0].transpose(0, 1))
            start += n
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)

    def commit(self) -> None:
        """Advance each cache past the tokens this forward wrote."""
        for cache, n in zip(self.caches, self._extend_lens, strict=True):
            cache.length += n


def _causal_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_len: int, scale: float
) -> torch.Tensor:
    """Attention of n new queries over prefix_len cached + n new keys (bottom-right causal)."""
    n = q.shape[2]
    if n == 1:  # a single new token sees every key: no mask needed
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)
    if prefix_len == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
    total = k.shape[2]
    rows = torch.arange(n, device=q.device).unsqueeze(1) + prefix_len
    mask = torch.arange(total, device=q.device).unsqueeze(0) <= rows
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
