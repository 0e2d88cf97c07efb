"""Rank 0 -> every other rank: the pool size once, then each forward's batch plan.

A plan is the list of `ForwardItem`s one forward runs (new token ids, KV slot
indices, prefix lengths, which rows want logits); every rank derives the same
positions and attention metadata from it. It travels by
`torch.distributed.broadcast_object_list`; None tells the workers to stop.
Safe only from the one thread of each rank that runs the model (collectives
must be issued in the same order on every rank).
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def broadcast(obj: Any = None) -> Any:
    """Send `obj` from rank 0 (other ranks pass nothing); return it on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def send_stop() -> None:
    """Rank 0: tell the worker ranks to leave their loop and leave the group (call once,
    at shutdown). A no-op without a process group."""
    if dist.is_initialized():
        broadcast(None)
        dist.destroy_process_group()  # an undestroyed gloo group can abort the exit
