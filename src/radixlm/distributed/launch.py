"""Start the tensor-parallel ranks of one host, and join rank 0's process group.

Ranks are numbered node by node: node k runs ranks k * P .. (k + 1) * P - 1, with
P = tp_size / nnodes. Node 0's engine process is rank 0 (`start_tp`); it starts
the other ranks of its node as child processes. Another node runs only ranks
(`run_node`). Every rank > 0 is `python -m radixlm.distributed.rank`, given its
EngineConfig on stdin, so it starts cleanly from a daemonic engine process.
"""

from __future__ import annotations

import contextlib
import ctypes
import pickle
import signal
import socket
import subprocess
import sys

from radixlm.config import EngineConfig, LoadConfig
from radixlm.distributed.group import TPGroup, init_tp_group


def local_ranks(load: LoadConfig) -> range:
    """The global ranks this host runs."""
    per = load.tp_size // load.nnodes
    return range(load.node_rank * per, (load.node_rank + 1) * per)


def init_method(load: LoadConfig) -> str:
    """torch.distributed's rendezvous URL: --dist-init-addr, else a free loopback port."""
    if load.dist_init_addr:
        return f"tcp://{load.dist_init_addr}"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when the thread that started it ends (Linux),
    so a rank blocked in a collective never outlives a killed rank 0."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn_rank(config: EngineConfig, rank: int, addr: str) -> subprocess.Popen:
    """Start rank `rank` (> 0) as a child process; it runs until rank 0 stops it, or until
    the thread that started it is gone."""
    proc = subprocess.Popen([sys.executable, "-m", "radixlm.distributed.rank", str(rank), addr],
                            stdin=subprocess.PIPE, preexec_fn=_die_with_parent)  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(pickle.dumps(config))
    proc.stdin.close()
    return proc


def start_tp(config: EngineConfig) -> TPGroup | None:
    """On node 0 with tp_size > 1: start this host's other ranks, join as rank 0.

    Returns None without tensor parallelism. Refuses a disk cache tier (its reloads
    write K/V outside a forward, which the other ranks would not see).
    """
    load = config.load
    if load.tp_size == 1:
        return None
    if config.cache.cache_dir is not None:
        raise ValueError("--cache-dir is not supported with --tp > 1 yet")
    addr = init_method(load)
    for rank in local_ranks(load)[1:]:
        spawn_rank(config, rank, addr)
    return init_tp_group(0, load.tp_size, addr, str(load.resolved_device()))


def run_node(config: EngineConfig) -> int:
    """On a node other than 0: run this host's ranks until rank 0 stops them; exit status."""
    addr = init_method(config.load)
    procs = [spawn_rank(config, rank, addr) for rank in local_ranks(config.load)]
    codes = [p.wait() for p in procs]
    return max(codes, default=0)
