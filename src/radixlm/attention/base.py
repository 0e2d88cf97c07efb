"""The one interface the model calls for attention.

The model knows nothing about requests or caches. For every forward it is
given a flat batch of T new tokens (the concatenation of each sequence's new
tokens, in sequence order) and an `AttentionContext` that knows, for every
sequence, where its earlier K/V live and where the new K/V must be written.
Each decoder layer calls `context.attend(layer_id, q, k, v)` once.

Implementations: `attention.dense` (a contiguous cache per sequence) and the
paged backend over the shared KV pool.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class AttentionContext(ABC):
    """Where each sequence of a flat batch reads and writes its K/V, for one forward."""

    @abstractmethod
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
        """Store the new K/V of layer `layer_id` and return causal attention over each sequence.

        q: [T, num_heads, head_dim]; k, v: [T, num_kv_heads, head_dim] — the new
        tokens of the flat batch, rotary embedding already applied. A new token
        attends to its sequence's cached tokens and to the new tokens at or before
        it; with a `window` W, only to those less than W positions back (the cache
        still keeps every token's K/V, so a prefix serves requests of any length).
        `softcap` c turns each score s into c * tanh(s / c) before the softmax.
        Returns [T, num_heads, head_dim] in q's dtype.
        """

    @property
    @abstractmethod
    def extend_lens(self) -> list[int]:
        """Number of new tokens of each sequence in the flat batch (sums to T)."""
