"""The native paged decode attention kernel alone: one decode step's 30 layers.

SmolLM2-135M's attention shape (9 query heads, 3 kv heads of 64), bfloat16, B
sequences of `--context` cached tokens each; every layer has its own K/V buffers,
so the step reads B * context * 30 rows as the engine does. Slots are consecutive
per sequence (a fresh pool's order), or a random permutation with `--scattered`
(a long-running pool's order). With `--in-cache` every sequence reads the same
`--context` rows, which stay in cache: the kernel's arithmetic alone, without the
DRAM reads. Prints the median of 7 steps, the K/V read rate (the bytes attended, so
above DRAM bandwidth with `--in-cache`), and the largest difference from a float32
reference on layer 0.

Run: .venv/bin/python benchmarks/bench_decode_attention.py [--scattered | --in-cache]
    [--batch 1 8 32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from radixlm import threads  # noqa: F401  (the engine's OpenMP settings, before kernels run)
from radixlm.native import kernels

LAYERS, HEADS, KV_HEADS, DIM = 30, 9, 3, 64


def reference(q, k, v, indptr, idx) -> torch.Tensor:
    """float32 attention of each sequence over its rows: [B, H, D]."""
    g, outs = HEADS // KV_HEADS, []
    for b in range(q.shape[0]):
        rows = idx[indptr[b] : indptr[b + 1]]
        kb = k[rows].float().repeat_interleave(g, 1)
        vb = v[rows].float().repeat_interleave(g, 1)
        s = torch.einsum("hd,nhd->hn", q[b].float(), kb) * DIM**-0.5
        outs.append(torch.einsum("hn,nhd->hd", s.softmax(-1), vb))
    return torch.stack(outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--context", type=int, default=1000)
    ap.add_argument("--scattered", action="store_true")
    ap.add_argument("--in-cache", action="store_true", help="every sequence reads one set of rows")
    args = ap.parse_args()
    native = kernels()
    assert native is not None, "the native kernels did not build here"
    torch.manual_seed(0)
    for b in args.batch:
        n = b * args.context
        rows = args.context if args.in_cache else n
        ks = [torch.randn(rows + 1, KV_HEADS, DIM).to(torch.bfloat16) for _ in range(LAYERS)]
        vs = [torch.randn(rows + 1, KV_HEADS, DIM).to(torch.bfloat16) for _ in range(LAYERS)]
        idx = torch.randperm(n) + 1 if args.scattered else torch.arange(1, n + 1)
        if args.in_cache:
            idx = torch.arange(1, args.context + 1).repeat(b)
        indptr = torch.arange(b + 1, dtype=torch.int64) * args.context
        q = torch.randn(b, HEADS, DIM).to(torch.bfloat16)
        out, _ = native.paged_decode(q, ks[0], vs[0], indptr, idx, DIM**-0.5)
        err = (out.float() - reference(q, ks[0], vs[0], indptr, idx)).abs().max().item()
        times = []
        for _ in range(8):
            t = time.perf_counter()
            for k, v in zip(ks, vs, strict=True):
                native.paged_decode(q, k, v, indptr, idx, DIM**-0.5)
            times.append(time.perf_counter() - t)
        sec = statistics.median(times[1:])
        gb = 2 * LAYERS * n * KV_HEADS * DIM * 2 / 1e9
        print(f"batch {b:3d}, context {args.context}: {sec * 1e3:7.2f} ms a step "
              f"({gb / sec:5.1f} GB/s of K/V), max |error| {err:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
