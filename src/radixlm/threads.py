"""Thread and OpenMP settings of the two server processes, decided in one place.

The HTTP process tokenizes and streams; its torch runs one thread, and its
OpenMP threads sleep when idle (`OMP_WAIT_POLICY=PASSIVE`) so they never
take a core from the engine.

The engine process runs the model with torch's default of one intra-op thread
per core. Its OpenMP workers spin for ENGINE_SPINCOUNT iterations after each
parallel region before they sleep (libgomp's `GOMP_SPINCOUNT`). A decode step
runs hundreds of short parallel regions with Python in between; with the
HTTP process's PASSIVE policy, or libgomp's default spin, the workers fell
asleep between regions, and single-stream decode through the server measured
38 tok/s against 66-68 tok/s spinning (benchmarks/single_stream.md).
Spinning for ever (ACTIVE) would burn the cores while the server is idle; this
count lets them sleep well under a second after the last step.

The same spin applies wherever radixlm runs the model in-process (the
`radixlm.Engine` API, `radixlm chat` and `generate`): there the loop runs on
its own thread, whose OpenMP team measured up to 20x slower per matmul with
libgomp's default spin than with this one.

OpenMP reads these variables once, when torch loads: `import radixlm` sets
the spin count when torch is not loaded yet (`engine_spin_env`),
`http_process_env()` runs before the server imports torch, and `engine_env()`
wraps the engine's spawn. A policy or spin count the user set in the
environment is left alone everywhere.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

HTTP_TORCH_THREADS = 1
ENGINE_SPINCOUNT = "2000000"
_MARK = "RADIXLM_HTTP_SET_OMP_WAIT_POLICY"  # set when the policy is ours, not the user's


def engine_spin_env() -> None:
    """Let this process's OpenMP workers spin ENGINE_SPINCOUNT before sleeping, if torch is
    not loaded yet and the user chose neither a policy nor a spin count."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ.setdefault("GOMP_SPINCOUNT", ENGINE_SPINCOUNT)


def http_process_env() -> None:
    """Make idle OpenMP workers of this (HTTP) process sleep, unless the user chose."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.environ[_MARK] = "1"


@contextmanager
def engine_env() -> Iterator[None]:
    """While spawning the engine: the environment without the HTTP process's own policy
    (the engine inherits the spin count `import radixlm` set)."""
    ours = os.environ.pop(_MARK, None) is not None
    policy = os.environ.pop("OMP_WAIT_POLICY", None) if ours else None
    try:
        yield
    finally:
        if ours:
            os.environ[_MARK] = "1"
            if policy is not None:
                os.environ["OMP_WAIT_POLICY"] = policy
