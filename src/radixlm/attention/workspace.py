"""Reusable gather buffers, one per KV pool."""

from __future__ import annotations

import weakref

import torch

from radixlm.kvcache.pool import KVPool


class GatherWorkspace:
    """Reusable buffers for the gathered K/V of a forward, grown on demand.

    Gathering into fresh tensors costs more than the gather itself on CPU
    (tens of MB of new pages per layer), so every context over the same pool
    shares one workspace. Contents are scratch: valid only inside one `attend`,
    so run one forward at a time per pool (the engine's loop does).
    """

    def __init__(self) -> None:
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def buffers(self, rows: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two [rows, like.shape[1]] tensors of like's dtype and device (views of the buffers)."""
        width = like.shape[1]
        if self._k is None or self._k.dtype != like.dtype or self._k.numel() < rows * width:
            self._k = like.new_empty(rows * width)
            self._v = like.new_empty(rows * width)
        assert self._v is not None
        return self._k[: rows * width].view(rows, width), self._v[: rows * width].view(rows, width)


_WORKSPACES: weakref.WeakKeyDictionary[KVPool, GatherWorkspace] = weakref.WeakKeyDictionary()


def workspace_for(pool: KVPool) -> GatherWorkspace:
    """The gather workspace shared by every context over `pool`."""
    ws = _WORKSPACES.get(pool)
    if ws is None:
        ws = _WORKSPACES[pool] = GatherWorkspace()
    return ws
