"""The native prefill/extend attention kernel against the torch path it replaces, per layer.

Both run through `PagedContext.attend` (the engine's path, K/V write included) on
a bfloat16 pool with SmolLM2-135M's attention shape (9 query heads, 3 kv heads of
64), slots scattered as in a long-running pool. "native" is what the engine runs
where `paged_extend` is built; "torch" is the same batch planned without it:
padded SDPA groups (causal flag for equal fresh prompts, a mask otherwise) and the
cascade's gathered shared runs. Prints the median ms of one layer's attention
(interleaved rounds), the ratio, and the largest output difference of the two.

Run: .venv/bin/python benchmarks/bench_extend_attention.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from timing import interleaved

from radixlm import threads  # noqa: F401  (the engine's OpenMP settings)
from radixlm.attention.paged import (
    PagedAttentionMetadata,
    PagedContext,
    extend_kernel_fits,
)
from radixlm.kvcache.pool import KVPool, PoolShape

HEADS, KV_HEADS, DIM = 9, 3, 64

# name: (shared cached run, [(own cached, new) per sequence], sequences per shared group)
CASES = {
    "prefill 1 x 1024": (0, [(0, 1024)], 1),
    "prefill 4 x 512": (0, [(0, 512)] * 4, 1),
    "extend 8 x 64 over a shared 1024": (1024, [(0, 64)] * 8, 8),
    "decode 32, 4 groups sharing 1024, 64 own": (1024, [(63, 1)] * 32, 8),
}


def batch(pool: KVPool, shared: int, seqs: list[tuple[int, int]], per_group: int, gen):
    """Slots, prefix and extend lengths, new slots, and q/k/v of one batch."""
    groups = len(seqs) // per_group
    sizes = [shared] * groups + [p + e for p, e in seqs]
    pieces = (torch.randperm(pool.total, generator=gen)[: sum(sizes)] + 1).split(sizes)
    slots = [torch.cat([pieces[i // per_group], pieces[groups + i]]) for i in range(len(seqs))]
    prefix = [shared + p for p, _ in seqs]
    extend = [e for _, e in seqs]
    cached = torch.cat([s[:n] for s, n in zip(slots, prefix, strict=True)])
    kv = torch.randn(2, cached.numel(), KV_HEADS, DIM, generator=gen).bfloat16()
    pool.set_kv(0, cached, kv[0], kv[1])
    new = torch.cat([s[n:] for s, n in zip(slots, prefix, strict=True)])
    t = new.numel()
    q = torch.randn(t, HEADS, DIM, generator=gen).bfloat16()
    k, v = torch.randn(2, t, KV_HEADS, DIM, generator=gen).bfloat16().unbind(0)
    return slots, prefix, extend, new, q, k, v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    pool = KVPool(PoolShape(1, KV_HEADS, DIM, torch.bfloat16), 60000)
    assert extend_kernel_fits(pool), "paged_extend is not built here (needs AVX512-BF16)"
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; one layer, ms (median)")
    print("| batch | native | torch | torch / native | max diff |")
    print("|---|---:|---:|---:|---:|")
    for name, (shared, seqs, per_group) in CASES.items():
        slots, prefix, extend, new, q, k, v = batch(pool, shared, seqs, per_group, gen)
        native = PagedContext(pool, slots, prefix, extend, new)
        assert native.metadata.extend or native.metadata.shared_runs is not None
        plain = PagedContext(pool, slots, prefix, extend, new)
        plain.metadata = PagedAttentionMetadata.build(
            slots, prefix, extend, new, KV_HEADS, pool.device
        )  # planned without the kernel
        runs = {"native": functools.partial(native.attend, 0, q, k, v, DIM**-0.5),
                "torch": functools.partial(plain.attend, 0, q, k, v, DIM**-0.5)}  # fmt: skip
        ms = {n: s * 1e3 for n, s in interleaved(runs, args.repeat).items()}
        diff = (runs["native"]().float() - runs["torch"]().float()).abs().max().item()
        ratio = ms["torch"] / ms["native"]
        print(f"| {name} | {ms['native']:.2f} | {ms['torch']:.2f} | {ratio:.2f}x | {diff:.4f} |")


if __name__ == "__main__":
    main()
