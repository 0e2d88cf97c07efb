"""The tensor-parallel group of one rank: its index, the group size, and the collectives.

Every collective here is a torch.distributed call on the default process group
(gloo on CPU, NCCL on CUDA); nothing is hand-rolled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class TPGroup:
    """One rank's view of a tensor-parallel group of `size` ranks; rank 0 schedules."""

    rank: int
    size: int

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ValueError(f"bad tensor-parallel rank {self.rank} of {self.size}")

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum `x` over the ranks, in place; return it (the same tensor on every rank)."""
        if self.size > 1:
            dist.all_reduce(x)
        return x

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's `x` [..., n] along the last dim: [..., size * n]."""
        if self.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=-1)


def init_tp_group(rank: int, size: int, init_method: str, device: str = "cpu") -> TPGroup:
    """Join the default process group (`init_method` e.g. "tcp://10.0.0.1:29500").

    Uses NCCL when `device` is CUDA, gloo otherwise. Safe to call once per process.
    """
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=size)
    return TPGroup(rank=rank, size=size)
