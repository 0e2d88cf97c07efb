"""How fast `radixlm replay` runs a trace: requests of trace per second, on one core.

A synthetic trace of ~1,000-token prompts (32 shared system prompts of ~800 tokens,
each followed by ~200 tokens of its own) is written with the real trace writer, read
back, and replayed through the real RadixCache, SchedulePolicy and PrefillAdder at
two pool sizes (one that holds every system prompt and one that evicts) and two
policies. Arrivals come every few engine steps, so a handful of requests run at once
and some queue, as on a busy server.

Run: .venv/bin/python benchmarks/bench_replay.py  (add --quick for a small trace)
Pin it to one idle core for figures (it pins itself to the first allowed CPU); the
replay is single-threaded Python.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

from radixlm.config import SchedulerConfig
from radixlm.doctor.replay import replay, scheduler_config
from radixlm.doctor.units import to_requests
from radixlm.sampling.params import SamplingParams
from radixlm.scheduler.request import FinishReason, Req
from radixlm.trace.reader import read_trace
from radixlm.trace.writer import TraceWriter, header_for


def write_trace(path: str, n: int, seed: int = 0) -> None:
    """`n` requests of ~1,000 tokens, arriving every 0-16 steps, 16-64 output tokens."""
    rng = random.Random(seed)
    systems = [[rng.randrange(3, 49000) for _ in range(rng.randrange(700, 900))]
               for _ in range(32)]  # fmt: skip
    w = TraceWriter(path, header_for("synthetic", 65536, 32768, SchedulerConfig(), False, 1),
                    max_bytes=1 << 30)  # fmt: skip
    step = 0
    for i in range(n):
        step += rng.randrange(0, 17)
        own = [rng.randrange(3, 49000) for _ in range(rng.randrange(100, 300))]
        ids = rng.choice(systems) + own
        req = Req(rid=str(i), input_ids=ids, params=SamplingParams(max_new_tokens=64),
                  extra_key=f"tenant-{i % 3}")  # fmt: skip
        req.output_ids = [rng.randrange(3, 49000) for _ in range(rng.randrange(16, 65))]
        req.admitted_once = True
        req.finish(FinishReason("length", length=len(req.output_ids)))
        w.arrived(req.rid, step)
        w.finished([req])
    w.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2,000 requests instead of 20,000")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    n = 2000 if args.quick else 20000
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        write_trace(d, n)
        t_write = time.perf_counter() - t
        t = time.perf_counter()
        trace = read_trace(d)
        reqs = to_requests(trace.records)
        t_read = time.perf_counter() - t
    tokens = sum(len(r.key) for r in reqs) / len(reqs)
    print(f"{len(reqs)} requests, {tokens:.0f} prompt tokens each on average; "
          f"written in {t_write:.1f} s, read into replay requests in {t_read:.1f} s "
          f"({len(reqs) / t_read:.0f} req/s)")
    print(f"{'policy':>8} {'pool tokens':>12} {'hit rate':>9} {'replay s':>9} {'req/s':>8} "
          f"{'req/cpu-s':>10}")
    for policy in ("lpm", "fcfs"):
        cfg = scheduler_config(trace.header.scheduler, policy)
        for pool in (65536, 16384):
            t, c = time.perf_counter(), time.process_time()
            r = replay(reqs, pool, cfg, trace.header.context_length)
            dt, dc = time.perf_counter() - t, time.process_time() - c
            print(f"{policy:>8} {pool:>12} {100 * r.hit_rate:>8.1f}% {dt:>9.2f} "
                  f"{len(reqs) / dt:>8.0f} {len(reqs) / dc:>10.0f}")


if __name__ == "__main__":
    main()
