"""Microbenchmark of the radix cache and the paged attention backend.

Radix cache: match_prefix / insert / evict latency for 2,000-token keys on
trees that hold ~1,000,000 tokens in 10,000 branches, for two layouts of
shared prefixes (a shallow system prompt / document / question hierarchy, and
deep chains where every key branches off a random earlier key), plus the
edge-comparison primitive with numpy arrays versus tuples.

Attention (SmolLM2-135M head shapes: 9 query heads, 3 KV heads, head_dim 64):
one layer of extend (512 new tokens on a 1,536-token prefix) and of batched
decode (32 sequences at context 1,024, and at mixed contexts), paged over a
pool with shuffled slots versus the dense per-sequence backend and a single
contiguous SDPA call on the same shapes. Figures are per layer and as
tokens/s for 30 layers of attention alone.

Run: .venv/bin/python benchmarks/bench_radix_cache.py  (add --quick for a small tree)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from timing import interleaved

from radixlm.attention.dense import DenseContext, DenseKVCache
from radixlm.attention.paged import PagedContext
from radixlm.config import ModelConfig
from radixlm.kvcache.pool import KVPool, PoolShape
from radixlm.kvcache.radix_cache import RadixCache, common_prefix_len

KEY_LEN = 2000
VOCAB = 49152
LAYERS = 30  # SmolLM2-135M
HQ, HKV, HEAD_DIM = 9, 3, 64


def timeit(fn: Callable[[], object], repeat: int, warmup: int = 2) -> float:
    """Median seconds of one call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# -- radix tree ----------------------------------------------------------------


def hierarchical_keys(num_keys: int, rng: np.random.Generator) -> list[np.ndarray]:
    """System prompt (1,200) + document (600) + question (28): num_keys / 100 system
    prompts, 10 documents each, 10 questions per document; ~1,000,000 tokens for
    10,000 keys, tree depth 3."""
    keys = []
    for _ in range(max(1, num_keys // 100)):
        system = rng.integers(0, VOCAB, 1200)
        for _ in range(10):
            doc = rng.integers(0, VOCAB, 600)
            keys += [np.concatenate([system, doc, rng.integers(0, VOCAB, 28)]) for _ in range(10)]
    return keys


def chained_keys(num_keys: int, rng: np.random.Generator) -> list[np.ndarray]:
    """2,000-token keys; key i shares its first 1,800-2,000 tokens with a random earlier
    key, so each adds ~100 new tokens (~1,000,000 for 10,000 keys) and branch points
    pile up along the paths: a deep tree (a stress case)."""
    keys = [rng.integers(0, VOCAB, KEY_LEN)]
    for i in range(1, num_keys):
        parent = keys[int(rng.integers(0, i))]
        shared = int(rng.integers(KEY_LEN - 200, KEY_LEN))
        keys.append(np.concatenate([parent[:shared], rng.integers(0, VOCAB, KEY_LEN - shared)]))
    return keys


def query_keys(keys: list[np.ndarray], n: int, rng: np.random.Generator) -> list[list[int]]:
    """2,000-token queries: a random-length prefix (1,000 tokens up to the whole key)
    of a cached key, then new tokens."""
    out = []
    for _ in range(n):
        base = keys[int(rng.integers(0, len(keys)))]
        shared = int(rng.integers(1000, len(base) + 1))
        out.append(np.concatenate([base[:shared], rng.integers(0, VOCAB, KEY_LEN - shared)]))
    return [k.tolist() for k in out]


def build_tree(keys: list[np.ndarray]) -> tuple[RadixCache, KVPool, float]:
    pool = KVPool(PoolShape(1, 1, 1, torch.float32), 1_100_000 + KEY_LEN * 600)
    cache = RadixCache(pool)
    t = time.perf_counter()
    for key in keys:
        slots = pool.alloc(len(key))
        n = cache.insert(key.tolist(), slots)
        pool.free(slots[:n])
    return cache, pool, time.perf_counter() - t


def tree_shape(cache: RadixCache, queries: list[list[int]]) -> str:
    nodes = cache._nodes()
    leaves = sum(1 for n in nodes if not n.children)
    depths = []
    for q in queries[:100]:
        node, d = cache.match_prefix(q, record=False).last_node, 0
        while node.parent is not None:
            node, d = node.parent, d + 1
        depths.append(d)
    return (f"{cache.total_size:,} tokens, {len(nodes):,} nodes, {leaves:,} leaves, "
            f"mean match depth {np.mean(depths):.0f} nodes")  # fmt: skip


def bench_tree(name: str, keys: list[np.ndarray], rows: list[tuple[str, ...]]) -> None:
    rng = np.random.default_rng(1)
    cache, pool, build = build_tree(keys)
    queries = query_keys(keys, 400, rng)
    hits = [cache.match_prefix(q, record=False).prefix_len for q in queries]  # splits done
    shape = tree_shape(cache, queries)  # the depths the timed matches walk
    t_list = timeit(lambda: [cache.match_prefix(q) for q in queries], 3, 1) / len(queries)
    tuples = [tuple(q) for q in queries]
    t_tuple = timeit(lambda: [cache.match_prefix(q) for q in tuples], 3, 1) / len(queries)
    miss = [rng.integers(0, VOCAB, KEY_LEN).tolist() for _ in range(200)]
    t_miss = timeit(lambda: [cache.match_prefix(q) for q in miss], 3, 1) / len(miss)
    inserts = query_keys(keys, 300, rng)
    slot_sets = [pool.alloc(KEY_LEN) for _ in inserts]
    t = time.perf_counter()
    for key, slots in zip(inserts, slot_sets, strict=True):
        pool.free(slots[: cache.insert(key, slots)])
    t_insert = (time.perf_counter() - t) / len(inserts)
    t = time.perf_counter()
    for _ in range(20):
        cache.evict(KEY_LEN)
    t_evict = (time.perf_counter() - t) / 20
    rows.append((name, shape, f"{build:.1f} s"))
    rows.append((f"{name}: match_prefix", f"{t_list * 1e6:.0f} µs (list key), "
                 f"{t_tuple * 1e6:.0f} µs (tuple key), miss {t_miss * 1e6:.0f} µs",
                 f"mean hit {np.mean(hits):,.0f} of {KEY_LEN:,} tokens"))  # fmt: skip
    rows.append((f"{name}: insert", f"{t_insert * 1e6:.0f} µs", "2,000-token key, list"))
    rows.append((f"{name}: evict(2,000)", f"{t_evict * 1e3:.2f} ms",
                 f"heap over {len(cache._leaves):,} evictable leaves"))  # fmt: skip


def bench_edge_compare(rows: list[tuple[str, ...]]) -> None:
    """The matching primitive on numpy arrays versus tuples."""
    rng = np.random.default_rng(2)
    for n in (16, 2000):
        a = rng.integers(0, VOCAB, n)
        ta = tuple(a.tolist())
        key_np, key_t = a.copy(), tuple(a.tolist())
        t_np = timeit(lambda a=a, k=key_np, n=n: _numpy_common_len(a, k[:n]), 2000)
        t_t = timeit(lambda ta=ta, k=key_t, n=n: k[:n] == ta, 2000)
        b = a.copy()
        b[n // 2] += 1
        tb = tuple(b.tolist())
        t_np_mis = timeit(lambda a=a, b=b: _numpy_common_len(a, b), 2000)
        t_t_mis = timeit(lambda ta=ta, tb=tb: common_prefix_len(ta, tb), 2000)
        rows.append((f"edge of {n:,} tokens, whole edge equal", f"numpy {t_np * 1e6:.2f} µs",
                     f"tuple {t_t * 1e6:.2f} µs"))  # fmt: skip
        rows.append((f"edge of {n:,} tokens, mismatch in the middle",
                     f"numpy {t_np_mis * 1e6:.2f} µs",
                     f"tuple (64-token chunks) {t_t_mis * 1e6:.2f} µs"))  # fmt: skip
    lst = rng.integers(0, VOCAB, KEY_LEN).tolist()
    t_conv = timeit(lambda: np.fromiter(lst, dtype=np.int64, count=len(lst)), 2000)
    t_tup = timeit(lambda: tuple(lst), 2000)
    rows.append(("key conversion from list[int], 2,000 tokens", f"numpy {t_conv * 1e6:.1f} µs",
                 f"tuple {t_tup * 1e6:.1f} µs"))  # fmt: skip


def _numpy_common_len(a: np.ndarray, b: np.ndarray) -> int:
    m = min(len(a), len(b))
    neq = a[:m] != b[:m]
    first = int(neq.argmax()) if m else 0
    return first if m and neq[first] else m


# -- attention -----------------------------------------------------------------


def _config() -> ModelConfig:
    return ModelConfig(
        architecture="llama", vocab_size=VOCAB, hidden_size=HQ * HEAD_DIM,
        intermediate_size=1536, num_layers=1, num_heads=HQ, num_kv_heads=HKV, head_dim=HEAD_DIM,
    )  # fmt: skip


def scattered_pool(total: int, dtype: torch.dtype, device: torch.device) -> KVPool:
    pool = KVPool.for_model(_config(), dtype, device, max_total_tokens=total)
    slots = pool.alloc(total)
    pool.free(slots[torch.randperm(total, device=device)])
    return pool


def _qkv(t: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q = torch.randn(t, HQ, HEAD_DIM, dtype=dtype, device=device)
    k = torch.randn(t, HKV, HEAD_DIM, dtype=dtype, device=device)
    return q, k, torch.randn_like(k)


def _dense_caches(lens: list[int], extra: int, dtype, device) -> list[DenseKVCache]:
    caches = []
    for n in lens:
        c = DenseKVCache(_config(), n + extra, dtype, device)
        c.k.normal_()
        c.v.normal_()
        c.length = n
        caches.append(c)
    return caches


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_case(name, prefix_lens, extend_lens, dtype, device, repeat, rows) -> None:
    """One layer of attention for a batch: paged, the dense backend, one contiguous SDPA."""
    scale = HEAD_DIM**-0.5
    t_total = sum(extend_lens)
    pool = scattered_pool(sum(prefix_lens) + t_total + 64, dtype, device)
    seq_slots = [pool.alloc(p + e) for p, e in zip(prefix_lens, extend_lens, strict=True)]
    for s, p in zip(seq_slots, prefix_lens, strict=True):
        k = torch.randn(p, HKV, HEAD_DIM, dtype=dtype, device=device)
        pool.set_kv(0, s[:p], k, torch.randn_like(k))
    out_loc = torch.cat([s[p:] for s, p in zip(seq_slots, prefix_lens, strict=True)])
    q, k, v = _qkv(t_total, dtype, device)

    def build() -> PagedContext:
        return PagedContext(pool, seq_slots, prefix_lens, extend_lens, out_loc)

    ctx = build()
    dctx = DenseContext(_dense_caches(prefix_lens, max(extend_lens), dtype, device), extend_lens)
    fns = {
        "paged": lambda: (ctx.attend(0, q, k, v, scale), _sync(device)),
        "dense": lambda: (dctx.attend(0, q, k, v, scale), _sync(device)),
        "sdpa": _contiguous_sdpa(prefix_lens, extend_lens, dtype, device),
        "build": build,
    }
    t = interleaved(fns, repeat)
    per_30 = t_total / (LAYERS * t["paged"])
    rows.append((name, f"{t['paged'] * 1e3:.2f}", f"{t['dense'] * 1e3:.2f}",
                 f"{t['sdpa'] * 1e3:.2f}", f"{t['paged'] / t['dense']:.2f}",
                 f"{t['paged'] / t['sdpa']:.2f}", f"{t['build'] * 1e3:.2f}",
                 f"{per_30:,.0f}"))  # fmt: skip


def _contiguous_sdpa(prefix_lens, extend_lens, dtype, device) -> Callable[[], object]:
    """One SDPA call on contiguous padded [B, H, Lmax, D] tensors with the same mask as the
    paged backend (none when lengths are equal): the paged backend minus its gathers."""
    b, qmax = len(prefix_lens), max(extend_lens)
    seq = torch.tensor([p + e for p, e in zip(prefix_lens, extend_lens, strict=True)])
    lmax = int(seq.max())
    q = torch.randn(b, HQ, qmax, HEAD_DIM, dtype=dtype, device=device)
    k = torch.randn(b, HKV, lmax, HEAD_DIM, dtype=dtype, device=device)
    v = torch.randn_like(k)
    pre = torch.tensor(prefix_lens).view(b, 1, 1, 1)
    k_pos = torch.arange(lmax).view(1, 1, 1, lmax)
    q_pos = torch.arange(qmax).view(1, 1, qmax, 1)
    mask = ((k_pos <= pre + q_pos) & (k_pos < seq.view(b, 1, 1, 1))).to(device)
    causal = b == 1 and prefix_lens[0] == 0 and qmax > 1
    if causal or (qmax == 1 and len(set(seq.tolist())) == 1):
        mask = None

    def run() -> None:
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
        _sync(device)

    return run


def bench_attention(dtype, device, repeat, rows) -> None:
    gen = torch.Generator().manual_seed(0)
    mixed = torch.randint(256, 1025, (32,), generator=gen).tolist()
    cases = [
        ("extend 512 on a 1,536 prefix", [1536], [512]),
        ("prefill 2,048, no prefix", [0], [2048]),
        ("decode, batch 32 at 1,024", [1023] * 32, [1] * 32),
        ("decode, batch 32 at 256..1,024", [n - 1 for n in mixed], [1] * 32),
        ("decode, batch 8 at 4,096", [4095] * 8, [1] * 8),
    ]
    for name, prefix, extend in cases:
        bench_case(name, prefix, extend, dtype, device, repeat, rows)


# -- report --------------------------------------------------------------------


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 keys instead of 10,000")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--skip-tree", action="store_true")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, device {device}, "
          f"numpy {np.__version__}\n")  # fmt: skip
    if not args.skip_tree:
        num_keys = 1000 if args.quick else 10_000
        rows: list[tuple[str, ...]] = []
        bench_tree("shared prefixes", hierarchical_keys(num_keys, np.random.default_rng(0)), rows)
        bench_tree("deep chains", chained_keys(num_keys, np.random.default_rng(0)), rows)
        print(table(("radix cache", "result", "notes"), rows) + "\n")
        rows = []
        bench_edge_compare(rows)
        print(table(("edge comparison", "numpy arrays", "tuples"), rows) + "\n")
    arows: list[tuple[str, ...]] = []
    bench_attention(dtype, device, args.repeat, arows)
    header = ("one layer, " + args.dtype, "paged ms", "dense ms", "1 SDPA ms",
              "paged/dense", "paged/SDPA", "build ms", "paged tok/s (30 layers)")  # fmt: skip
    print(table(header, arows))


if __name__ == "__main__":
    main()
