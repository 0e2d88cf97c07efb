"""Microbenchmark of shared-prefix (cascade) paged attention against the padded path.

One layer of decode with SmolLM2-135M head shapes (9 query heads, 3 KV heads,
head_dim 64) over a pool with shuffled slots. Batches are groups of sequences
that share the pool slots of a leading run (as the radix cache hands them out),
then each has its own slots. *padded*: `PagedContext(..., cascade=False)`, which
gathers every sequence's K/V into one padded block; *cascade*: the default,
which gathers each shared run once per group. Both include the K/V write; the
contenders are timed in alternating rounds, median per layer. *build*: the
once-per-forward context construction (shared-run detection included).

Run: .venv/bin/python benchmarks/bench_cascade.py [--repeat 20] [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import platform

import torch
import torch.nn.functional as F
from timing import interleaved

from radixlm.attention.cascade import attention_lse
from radixlm.attention.paged import PagedContext
from radixlm.config import ModelConfig
from radixlm.kvcache.pool import KVPool

HQ, HKV, HEAD_DIM = 9, 3, 64


def _config() -> ModelConfig:
    return ModelConfig(
        architecture="llama", vocab_size=49152, hidden_size=HQ * HEAD_DIM,
        intermediate_size=1536, num_layers=1, num_heads=HQ, num_kv_heads=HKV, head_dim=HEAD_DIM,
    )  # fmt: skip


def decode_batch(
    groups: int, per_group: int, shared: int, own: tuple[int, int], dtype: torch.dtype, seed: int
) -> tuple[KVPool, list[torch.Tensor], list[int]]:
    """A pool and the slot lists of groups x per_group decoding sequences.

    Each group shares `shared` slots; each sequence then has own[0]..own[1] own
    cached slots (uniform) and one new slot. Returns (pool, seq_slots, prefix_lens).
    """
    gen = torch.Generator().manual_seed(seed)
    owns = torch.randint(own[0], own[1] + 1, (groups * per_group,), generator=gen).tolist()
    total = groups * shared + sum(owns) + len(owns)
    pool = KVPool.for_model(_config(), dtype, torch.device("cpu"), max_total_tokens=total)
    free = pool.alloc(total)
    free = free[torch.randperm(total, generator=gen)]
    k = torch.randn(total, HKV, HEAD_DIM, generator=gen).to(dtype)
    pool.set_kv(0, free, k, torch.randn_like(k))
    seq_slots, prefix_lens, at = [], [], groups * shared
    for gi in range(groups):
        run = free[gi * shared : (gi + 1) * shared]
        for j in range(per_group):
            n = owns[gi * per_group + j]
            seq_slots.append(torch.cat([run, free[at : at + n + 1]]))
            prefix_lens.append(shared + n)
            at += n + 1
    return pool, seq_slots, prefix_lens


def bench_case(name: str, groups: int, per_group: int, shared: int, own, dtype, repeat, rows):
    pool, seq_slots, prefix = decode_batch(groups, per_group, shared, own, dtype, seed=0)
    b = len(seq_slots)
    extend = [1] * b
    out_loc = torch.cat([s[p:] for s, p in zip(seq_slots, prefix, strict=True)])
    q = torch.randn(b, HQ, HEAD_DIM, dtype=dtype)
    k = torch.randn(b, HKV, HEAD_DIM, dtype=dtype)
    v = torch.randn_like(k)
    scale = HEAD_DIM**-0.5

    def make(cascade: bool) -> PagedContext:
        return PagedContext(pool, seq_slots, prefix, extend, out_loc, cascade=cascade)

    padded, cascaded = make(False), make(True)
    diff = (padded.attend(0, q, k, v, scale) - cascaded.attend(0, q, k, v, scale)).abs().max()
    shared_groups = len(cascaded.metadata.shared)
    t = interleaved(
        {
            "padded": lambda: padded.attend(0, q, k, v, scale),
            "cascade": lambda: cascaded.attend(0, q, k, v, scale),
            "build padded": lambda: make(False),
            "build cascade": lambda: make(True),
        },
        repeat,
    )
    rows.append((name, f"{shared_groups}", f"{t['padded'] * 1e3:.2f}",
                 f"{t['cascade'] * 1e3:.2f}", f"{t['padded'] / t['cascade']:.2f}",
                 f"{t['build padded'] * 1e3:.2f} / {t['build cascade'] * 1e3:.2f}",
                 f"{diff.item():.1e}"))  # fmt: skip


def bench_kernels(dtype, repeat, rows) -> None:
    """SDPA versus `attention_lse` (matmuls + softmax with LSE) on contiguous decode blocks."""
    for b, length in ((32, 1100), (32, 96), (8, 4096)):
        q = torch.randn(b, HQ, 1, HEAD_DIM, dtype=dtype)
        k = torch.randn(b, HKV, length, HEAD_DIM, dtype=dtype)
        v = torch.randn_like(k)
        q5 = q.view(b, HKV, HQ // HKV, 1, HEAD_DIM).transpose(2, 3)  # [b, Hkv, 1, G, D]
        t = interleaved(
            {
                "sdpa": lambda q=q, k=k, v=v: F.scaled_dot_product_attention(
                    q, k, v, enable_gqa=True
                ),
                "lse": lambda q5=q5, k=k, v=v: attention_lse(q5, k, v, HEAD_DIM**-0.5),
            },
            repeat,
        )
        rows.append((f"decode {b} x {length:,}", f"{t['sdpa'] * 1e3:.2f}",
                     f"{t['lse'] * 1e3:.2f}", f"{t['lse'] / t['sdpa']:.2f}"))  # fmt: skip


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads\n")  # fmt: skip
    rows: list[tuple[str, ...]] = []
    cases = [
        ("4 groups x 8, shared 1,024, own 64..96", 4, 8, 1024, (63, 95)),
        ("1 group x 32, shared 1,024, own 64..96", 1, 32, 1024, (63, 95)),
        ("8 groups x 4, shared 512, own 0..32", 8, 4, 512, (0, 31)),
        ("16 groups x 2, shared 256, own 0..32", 16, 2, 256, (0, 31)),
        ("16 groups x 2, shared 128, own 0..32", 16, 2, 128, (0, 31)),
        ("4 groups x 8, shared 64, own 0..32", 4, 8, 64, (0, 31)),
        ("32 x 1 (nothing shared), own 1,024..1,100", 32, 1, 0, (1023, 1099)),
    ]
    for name, g, per, shared, own in cases:
        bench_case(name, g, per, shared, own, dtype, args.repeat, rows)
    header = ("decode, one layer, " + args.dtype, "shared groups", "padded ms", "cascade ms",
              "padded/cascade", "build ms (padded / cascade)", "max abs diff")  # fmt: skip
    print(table(header, rows) + "\n")
    krows: list[tuple[str, ...]] = []
    bench_kernels(dtype, args.repeat, krows)
    print(table(("contiguous block", "SDPA ms", "attention_lse ms", "lse/SDPA"), krows))


if __name__ == "__main__":
    main()
