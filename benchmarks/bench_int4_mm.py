"""The int4 projections of one decode step alone: torch's kernel against radixlm's.

    .venv/bin/python benchmarks/bench_int4_mm.py [--rows 1,2,4,8] [--passes 9]

Builds 120 `Int4Linear` layers of SmolLM2-135M's projection shapes (30 layers of
qkv 960x576, o 576x576, gate/up 3072x576, down 576x1536) from random weights, and
times one pass over all of them (each weight read once, as a decode step reads
it) with `aten._weight_int4pack_mm_for_cpu` and with `native int4_mm`, first with
the weights on ordinary pages, then packed into one huge-page block
(`radixlm.hugepages.pack_buffers`, as the loader does). Prints the median and best
pass in ms, and the hot rate: one gate/up weight called 200 times in a row.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from radixlm.hugepages import pack_buffers
from radixlm.models.quant import Int4Linear, quantize_int4
from radixlm.native import kernels

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]


def kernels_to_time() -> dict[str, Callable[[torch.Tensor, Int4Linear], torch.Tensor]]:
    native = kernels()
    out: dict[str, Callable[[torch.Tensor, Int4Linear], torch.Tensor]] = {
        "torch": lambda x, m: torch.ops.aten._weight_int4pack_mm_for_cpu(
            x, m.packed, m.group, m.scales_zeros
        )
    }
    if native is not None and native.int4_mm_supported():
        out["native"] = lambda x, m: native.int4_mm(x, m.packed, m.scales_zeros, m.group)
    return out


def passes(fn, layers, xs, n: int) -> list[float]:
    """Seconds of each of n passes over every layer."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        for m in layers:
            fn(xs[m.in_features], m)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="1,2,4,8")
    ap.add_argument("--passes", type=int, default=9)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    layers = [Int4Linear(*quantize_int4(torch.randn(n, k, generator=gen) * 0.02), None)
              for _ in range(30) for n, k in SHAPES]  # fmt: skip
    fns = kernels_to_time()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 120 projections")
    print("| pages | rows | kernel | median ms | best ms |\n|---|---:|---|---:|---:|")
    for pages in ("4 KiB", "2 MiB"):
        if pages == "2 MiB":
            pack_buffers(layers)
        for rows in map(int, args.rows.split(",")):
            xs = {k: torch.randn(rows, k, generator=gen).bfloat16() for k in (576, 1536)}
            for name, fn in fns.items():
                t = passes(fn, layers, xs, args.passes)
                print(f"| {pages} | {rows} | {name} | {statistics.median(t) * 1e3:.2f} | "
                      f"{min(t) * 1e3:.2f} |")  # fmt: skip
    gate_up = layers[2]
    x = torch.randn(1, 576, generator=gen).bfloat16()
    nbytes = gate_up.packed.numel() + gate_up.scales_zeros.numel() * 2
    for name, fn in fns.items():
        t = min(passes(fn, [gate_up] * 200, {576: x}, 5)) / 200
        print(f"hot 3072x576, 1 row, {name}: {t * 1e6:.1f} us, {nbytes / t / 1e9:.1f} GB/s")


if __name__ == "__main__":
    main()
