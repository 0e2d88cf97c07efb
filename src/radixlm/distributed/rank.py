"""`python -m radixlm.distributed.rank RANK INIT_URL` (EngineConfig pickled on stdin):
one tensor-parallel rank > 0, in its worker loop until rank 0 says stop."""

from __future__ import annotations

import dataclasses
import logging
import pickle
import sys
from typing import NoReturn

import torch

from radixlm.config import EngineConfig
from radixlm.distributed.group import init_tp_group
from radixlm.distributed.plan import exit_now, leave_group
from radixlm.distributed.worker import run_worker


def main(argv: list[str]) -> NoReturn:
    rank, addr = int(argv[0]), argv[1]
    config: EngineConfig = pickle.loads(sys.stdin.buffer.read())
    logging.basicConfig(level="INFO", format=f"%(asctime)s %(levelname)s tp{rank}: %(message)s")
    load = config.load
    device = load.resolved_device()
    if device.type == "cuda":  # one GPU per rank of this host
        local = rank % (load.tp_size // load.nnodes)
        torch.cuda.set_device(local)
        config = dataclasses.replace(config, load=dataclasses.replace(load, device=f"cuda:{local}"))
    tp = init_tp_group(rank, load.tp_size, addr, str(device))
    run_worker(config, tp)
    leave_group()
    exit_now(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
