"""One prefill of the embedded SmolLM2 with int4 layers on bfloat16 and on int8 activations.

Loads the default model once (int4 weights, bf16 compute) and switches its int4 layers
between `--activations bfloat16` and `int8` (`loader.quantize.set_activations`), taking
turns for a few rounds: the best of 3 forwards through the paged K/V pool per round,
and the KL between the two modes' last-token distributions. Needs `int4_mm_q8`.

    .venv/bin/python benchmarks/bench_prefill_activations.py [--tokens 576 128 33]
"""

from __future__ import annotations

import argparse
import time

import torch

from radixlm.attention.paged import PagedContext, head_major_fits
from radixlm.config import LoadConfig
from radixlm.kvcache.pool import KVPool
from radixlm.loader import DEFAULT_MODEL, load_model, resolve_model_path
from radixlm.loader.quantize import set_activations


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[576, 128, 33])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    loaded = load_model(LoadConfig(model=str(resolve_model_path(DEFAULT_MODEL))), progress=False)
    model = loaded.model
    pool = KVPool.for_model(
        loaded.config, loaded.dtype, loaded.device, max_total_tokens=max(args.tokens) + 64,
        head_major=head_major_fits(loaded.config, loaded.dtype, loaded.device),
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)

    def prefill(ids: torch.Tensor) -> torch.Tensor:
        n = len(ids)
        slots = pool.alloc(n)
        ctx = PagedContext(pool, [slots], [0], [n], slots)
        with torch.inference_mode():
            out = model(ids, ctx.positions, ctx, torch.tensor([n - 1]))
        pool.free(slots)
        return out.float().log_softmax(-1)

    print("| prompt tokens | bfloat16 activations (ms) | int8 activations (ms) | KL(last) |")
    print("|---:|---|---|---:|")
    for n in args.tokens:
        ids = torch.randint(0, loaded.config.vocab_size, (n,), generator=gen)
        times: dict[str, list[float]] = {"bfloat16": [], "int8": []}
        last: dict[str, torch.Tensor] = {}
        for _ in range(args.rounds):
            for mode in times:
                set_activations(model, mode)
                last[mode] = prefill(ids)
                best = float("inf")
                for _ in range(3):
                    start = time.perf_counter()
                    prefill(ids)
                    best = min(best, time.perf_counter() - start)
                times[mode].append(best * 1e3)
        ref, got = last["bfloat16"], last["int8"]
        kl = (ref.exp() * (ref - got)).sum(-1).mean().item()
        cols = [" / ".join(f"{t:.1f}" for t in times[m]) for m in times]
        print(f"| {n} | {cols[0]} | {cols[1]} | {kl:.2e} |")


if __name__ == "__main__":
    main()
