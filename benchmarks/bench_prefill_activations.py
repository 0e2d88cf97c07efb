"""One prefill of the embedded SmolLM2 with int4 layers on bfloat16 and on int8 activations.

Loads the default model once (int4 weights, bf16 compute) and switches its int4 layers
between `--activations bfloat16` and `int8` (`loader.quantize.set_activations`), taking
turns for a few rounds: the best of 3 forwards through the paged K/V pool per round
(the modes alternating within it, `timing.interleaved`), and the KL between the two
modes' last-token distributions. Needs `int4_mm_q8`.

    .venv/bin/python benchmarks/bench_prefill_activations.py [--tokens 576 128 33]
"""

from __future__ import annotations

import argparse

import torch
from bench_fidelity import engine_pool, mean_kl, prefill_logprobs
from timing import interleaved

from radixlm.config import LoadConfig
from radixlm.loader import DEFAULT_MODEL, load_model, resolve_model_path
from radixlm.loader.quantize import set_activations

MODES = ("bfloat16", "int8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[576, 128, 33])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    loaded = load_model(LoadConfig(model=str(resolve_model_path(DEFAULT_MODEL))), progress=False)
    model, pool = loaded.model, engine_pool(loaded, max(args.tokens))
    gen = torch.Generator().manual_seed(0)

    print("| prompt tokens | bfloat16 activations (ms) | int8 activations (ms) | KL(last) |")
    print("|---:|---|---|---:|")
    for n in args.tokens:
        ids = torch.randint(0, loaded.config.vocab_size, (n,), generator=gen)
        last: dict[str, torch.Tensor] = {}

        def run(mode: str, ids: torch.Tensor = ids, last: dict = last) -> None:
            set_activations(model, mode)
            last[mode] = prefill_logprobs(model, pool, ids, torch.tensor([len(ids) - 1]))

        fns = {mode: lambda mode=mode: run(mode) for mode in MODES}
        rounds = [interleaved(fns, 3, reduce=min) for _ in range(args.rounds)]
        cols = [" / ".join(f"{r[m] * 1e3:.1f}" for r in rounds) for m in MODES]
        kl = mean_kl(last["bfloat16"], last["int8"])
        print(f"| {n} | {cols[0]} | {cols[1]} | {kl:.2e} |")


if __name__ == "__main__":
    main()
