"""The load generator: send a workload to a backend on a schedule, collect the results.

Requests without a parent arrive open-loop: all at once (`rate` inf), or with Poisson
inter-arrival gaps of mean 1 / rate seconds drawn from the seed. A child is sent as
soon as its parent's answer is in (a multi-turn conversation's next turn, a tree's next
level); it is skipped, as failed, if the parent failed. At most `max_concurrency`
requests are in flight. Every send and every answer is logged in order, for the oracle
hit rate (`oracle.replay`).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Protocol

from tqdm import tqdm

from radixlm.bench.metrics import RequestResult
from radixlm.bench.workload import BenchRequest, Part, Workload, full_prompt, prompt_ids


class Backend(Protocol):
    name: str

    async def generate(
        self, index: int, parts: tuple[Part, ...], output_len: int
    ) -> RequestResult: ...


@dataclass
class RunOutcome:
    """Results in request index order, the client's prompt ids, the event log, the duration."""

    results: list[RequestResult]
    prompts: dict[int, list[int]]  # the token ids each sent request's prompt had
    events: list[tuple[str, int, list[int]]]  # ("send", i, prompt) / ("done", i, computed)
    duration: float


def arrival_times(n: int, rate: float, seed: int) -> list[float]:
    """Offsets in seconds of `n` open-loop arrivals: all 0 for inf, else Poisson at `rate`."""
    if math.isinf(rate):
        return [0.0] * n
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


class _Run:
    """One run's state: what was sent, what came back, and the concurrency gate."""

    def __init__(self, workload: Workload, backend: Backend, cap: int | None, bar: Any) -> None:
        self.workload, self.backend, self.bar = workload, backend, bar
        self.children = workload.children()
        self.gate = asyncio.Semaphore(cap) if cap else None
        self.prompts: dict[int, tuple[Part, ...]] = {}
        self.results: dict[int, RequestResult] = {}
        self.events: list[tuple[str, int, list[int]]] = []

    async def send(self, req: BenchRequest, parts: tuple[Part, ...]) -> None:
        """Send `req` (when the gate lets it), then its children, concurrently."""
        self.prompts[req.index] = parts
        if self.gate is not None:
            await self.gate.acquire()
        try:
            ids = prompt_ids(parts)
            self.events.append(("send", req.index, ids))
            res = await self.backend.generate(req.index, parts, req.output_len)
            if res.error is None:  # the last answer token is sampled, never computed
                self.events.append(("done", req.index, ids + list(res.output_ids[:-1])))
        finally:
            if self.gate is not None:
                self.gate.release()
        self.results[req.index] = res
        self.bar.update(1)
        kids = self.children.get(req.index, [])
        if res.error is not None:
            self._skip(kids, f"parent request {req.index} failed")
            return
        await asyncio.gather(
            *(self.send(kid, full_prompt(kid, parts, res.output_ids)) for kid in kids)
        )

    def _skip(self, reqs: list[BenchRequest], why: str) -> None:
        for r in reqs:
            now = time.perf_counter()
            self.results[r.index] = RequestResult(r.index, 0, None, [], "", now, now, error=why)
            self.bar.update(1)
            self._skip(self.children.get(r.index, []), why)


async def run_workload(
    workload: Workload,
    backend: Backend,
    rate: float = math.inf,
    max_concurrency: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> RunOutcome:
    """Send every request of `workload` to `backend`; returns when all have finished."""
    bar = tqdm(total=len(workload.requests), desc=workload.name, unit="req",
               disable=not progress, dynamic_ncols=True)  # fmt: skip
    run = _Run(workload, backend, max_concurrency, bar)
    roots = workload.roots()
    start = time.perf_counter()

    async def arrive(req: BenchRequest, at: float) -> None:
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        await run.send(req, full_prompt(req, None, ()))

    try:
        times = arrival_times(len(roots), rate, seed)
        await asyncio.gather(*(arrive(r, t) for r, t in zip(roots, times, strict=True)))
    finally:
        bar.close()
    duration = time.perf_counter() - start
    return RunOutcome(
        results=[run.results[i] for i in range(len(workload.requests))],
        prompts={i: prompt_ids(p) for i, p in run.prompts.items()},
        events=run.events,
        duration=duration,
    )
