"""Reload speed of the disk cache tier (--cache-dir) beside the prefill it replaces.

One engine computes `--prompts` random prompts of `--tokens` tokens (one
output token each: the request time is the prefill) with a disk tier, waits
until every entry is written, and stops. A second engine on the same
directory then runs the same prompts: each is found on disk, read back
(checksums verified) into the pool and reused, leaving one token to compute.
Reported: prefill tokens/s of the cold run, the reload's request-level
tokens/s, the tier's own read rate (file read + checksum + copy, from
`TierStats`), and a warm in-memory hit for scale.

The files were just written, so the reads usually come from the OS page
cache, not the device: drop the caches between the phases (as root:
`sync; echo 3 > /proc/sys/vm/drop_caches`, with `--pause`) to time the disk.
Figures need a quiet machine.

Run: .venv/bin/python benchmarks/bench_cache_tier.py [--tokens 1024 --prompts 4] [--quick]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import radixlm

ONE = {"max_new_tokens": 1, "temperature": 0.0, "ignore_eos": True}


def timed(eng: radixlm.Engine, ids: list[int]) -> tuple[float, int]:
    """(seconds, cached_tokens) of one request."""
    t = time.perf_counter()
    out = eng.generate(input_ids=ids, sampling_params=ONE)
    return time.perf_counter() - t, out["meta_info"]["cached_tokens"]


def engine(args: argparse.Namespace, cache_dir: Path) -> radixlm.Engine:
    return radixlm.Engine(model=args.model, dtype=args.dtype, cache_dir=str(cache_dir),
                          max_total_tokens=args.tokens * args.prompts + 256)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--tokens", type=int, default=1024, help="prompt length")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--cache-dir", default=None, help="default: a temporary directory")
    p.add_argument("--pause", action="store_true", help="wait for Enter between the phases")
    p.add_argument("--quick", action="store_true", help="2 prompts of 256 tokens (a smoke run)")
    args = p.parse_args()
    if args.quick:
        args.tokens, args.prompts = 256, 2
    tmp = tempfile.TemporaryDirectory(prefix="radixlm-tier-")
    cache_dir = Path(args.cache_dir or tmp.name)

    cold = engine(args, cache_dir)
    vocab = cold.loaded.config.vocab_size
    rng = random.Random(0)
    prompts = [[rng.randrange(3, vocab) for _ in range(args.tokens)] for _ in range(args.prompts)]
    timed(cold, [rng.randrange(3, vocab) for _ in range(64)])  # warm-up, not counted
    prefill = [timed(cold, ids)[0] for ids in prompts]
    tier = cold.scheduler.kv.cache.tier.tier
    t = time.perf_counter()
    tier.wait_idle()
    drain = time.perf_counter() - t
    mib = tier.index.total_bytes / 2**20
    cold.shutdown()
    tier.close()
    if args.pause:
        input("entries written; drop the page cache now if you want disk reads, then Enter: ")

    warm = engine(args, cache_dir)
    timed(warm, [rng.randrange(3, vocab) for _ in range(64)])  # warm-up, not counted
    reload = [timed(warm, ids) for ids in prompts]
    memory = [timed(warm, ids)[0] for ids in prompts]
    stats = warm.scheduler.kv.cache.tier.tier.stats
    warm.shutdown()
    warm.scheduler.kv.cache.tier.tier.close()

    n = args.tokens
    cached = [c for _, c in reload]
    print(f"model {args.model} ({args.dtype}), {args.prompts} prompts of {n} tokens, "
          f"{mib:.1f} MiB on disk ({mib * 2**20 / (n * args.prompts) / 1024:.1f} KiB/token), "
          f"writer drained {drain:.2f} s after the last request")  # fmt: skip
    print(f"cached tokens on the restarted engine: {cached} (of {n - 1} reusable each)")
    rows = [
        ("prefill (cold, no cache)", statistics.median(prefill), n),
        ("reload from disk (request)", statistics.median(t for t, _ in reload), n),
        ("hit in memory (request)", statistics.median(memory), n),
    ]
    print(f"{'':30} {'median s':>10} {'prompt tok/s':>14}")
    for name, sec, toks in rows:
        print(f"{name:30} {sec:10.4f} {toks / sec:14.0f}")
    rate = stats.tokens_loaded / stats.load_seconds if stats.load_seconds else float("nan")
    print(f"tier reads alone: {stats.tokens_loaded} tokens in {stats.load_seconds:.4f} s "
          f"= {rate:.0f} tok/s (file read + checksum + copy)")  # fmt: skip
    tmp.cleanup()


if __name__ == "__main__":
    main()
