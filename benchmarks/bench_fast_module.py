"""What `FastModule` saves in a decode step: registered values as plain attributes or not.

Builds the engine's runtime as `profile_decode.py` does (the default model and mode,
one request of `--context` tokens, prefilled), then alternates rounds of `--steps`
decode steps through `Scheduler.step` with the model's parameters, buffers and
submodules bound in each module's `__dict__` (FastModule's invariant) and with those
copies removed, so every lookup goes through `nn.Module.__getattr__` as for a plain
`nn.Module`. Prints the median ms per step of each and their ratio.

Run: .venv/bin/python benchmarks/bench_fast_module.py [--context 1000] [--rounds 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

from profile_decode import start_batch

from radixlm.models.fast_module import _REGISTRIES, FastModule


def bind(modules: list[FastModule], on: bool) -> None:
    for m in modules:
        for reg in _REGISTRIES:
            for name in m.__dict__[reg]:
                if on:
                    m.rebind(name)
                else:
                    m.__dict__.pop(name, None)  # found by nn.Module.__getattr__ again


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--context", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    args.dtype, args.quantization, args.shared, args.groups = "auto", None, 0, 1
    runtime = start_batch(args, 1)
    sched = runtime.scheduler
    modules = [m for m in runtime.loaded.model.modules() if isinstance(m, FastModule)]
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for on in (False, True):
            bind(modules, on)
            t = time.perf_counter()
            for _ in range(args.steps):
                sched.step()
            times[on].append((time.perf_counter() - t) / args.steps * 1e3)
    bind(modules, True)
    plain, fast = statistics.median(times[False]), statistics.median(times[True])
    print(f"batch 1, context {args.context}, {len(modules)} FastModules, "
          f"{args.rounds} alternating rounds of {args.steps} steps")
    print(f"plain lookups: {plain:.2f} ms a step (median); bound: {fast:.2f} ms; "
          f"{plain / fast:.3f}x")


if __name__ == "__main__":
    main()
