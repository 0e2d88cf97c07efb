"""Rank 0 -> every other rank: the pool size once, then each forward's batch plan.

A plan is the list of `ForwardItem`s one forward runs (new token ids, KV slot
indices, prefix lengths, which rows want logits); every rank derives the same
positions and attention metadata from it. It travels by
`torch.distributed.broadcast_object_list`; None tells the workers to stop.
Safe only from the one thread of each rank that runs the model (collectives
must be issued in the same order on every rank).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, NoReturn

import torch.distributed as dist


def broadcast(obj: Any = None) -> Any:
    """Send `obj` from rank 0 (other ranks pass nothing); return it on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def send_stop() -> bool:
    """Rank 0: tell the worker ranks to leave their loop, and leave the group (call once,
    at shutdown). Returns whether there was a group; then end with `exit_now`."""
    if not dist.is_initialized():
        return False
    broadcast(None)
    leave_group()
    return True


def leave_group() -> None:
    """Every rank, after its last collective: a barrier, then leave the process group
    (an undestroyed gloo group can abort the exit)."""
    dist.barrier()
    dist.destroy_process_group()


def exit_now(code: int = 0) -> NoReturn:
    """End a process that was in a group, skipping the interpreter's finalization.

    gloo's worker threads free a finished collective's tensors some time after `wait()`
    returns; freeing a Python-owned tensor takes the GIL, and during finalization that
    aborts the process ("terminate called without an active exception"). Nothing is
    left to clean up once the group is left, so flush the logs and leave at once.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
