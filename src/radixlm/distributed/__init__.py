"""Tensor-parallel process groups on torch.distributed (gloo on CPU, NCCL on CUDA)."""

from radixlm.distributed.group import TPGroup, init_tp_group

__all__ = ["TPGroup", "init_tp_group"]
