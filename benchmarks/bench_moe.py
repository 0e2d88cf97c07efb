"""Decode step of a mixture-of-experts model against a dense model with the same active weights.

Both are random Qwen3-style decoders with the same attention; the MoE model has
`--experts` experts of `--expert-ffn` rows per layer, `--top-k` per token; the
dense model's MLP has top_k * expert_ffn rows, so one token reads the same
number of weights in both. A decode step of B sequences (each with a 64-token
cached prefix) runs through the paged attention context, as the engine does.
Contenders are timed in alternating rounds, median per step.

Run: .venv/bin/python benchmarks/bench_moe.py [--batch 1 8 32] [--repeat 30]
"""

from __future__ import annotations

import argparse
import platform

import torch
from timing import interleaved

from radixlm.attention.paged import PagedContext
from radixlm.config import ModelConfig, MoEConfig
from radixlm.kvcache.pool import KVPool
from radixlm.models.llama import LlamaForCausalLM

PREFIX = 64


def _model(args: argparse.Namespace, moe: bool) -> LlamaForCausalLM:
    cfg = ModelConfig(
        architecture="qwen3_moe" if moe else "qwen3", vocab_size=8192, hidden_size=args.hidden,
        intermediate_size=args.top_k * args.expert_ffn, num_layers=args.layers, num_heads=8,
        num_kv_heads=2, head_dim=args.hidden // 8, qk_norm=True,
        moe=MoEConfig(args.experts, args.top_k, args.expert_ffn) if moe else None,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.to(args.dtype).eval()


def _decode_step(model: LlamaForCausalLM, batch: int):
    """A closure running one decode step of `batch` sequences over cached prefixes."""
    cfg = model.config
    dtype = model.embed_tokens.weight.dtype
    pool = KVPool.for_model(cfg, dtype, "cpu", max_total_tokens=batch * (PREFIX + 1) + 8)
    slots = [pool.alloc(PREFIX + 1) for _ in range(batch)]
    ids = torch.randint(0, cfg.vocab_size, (batch,))

    def step() -> None:
        out_loc = torch.stack([s[-1] for s in slots])
        ctx = PagedContext(pool, slots, [PREFIX] * batch, [1] * batch, out_loc)
        model(ids, ctx.positions, ctx)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--expert-ffn", type=int, default=512)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    args.dtype = getattr(torch, args.dtype)
    moe, dense = _model(args, True), _model(args, False)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.dtype}")  # fmt: skip
    print(f"# weights: MoE {moe.memory_bytes() / 2**20:.1f} MiB "
          f"({moe.active_memory_bytes() / 2**20:.1f} MiB active per token), "
          f"dense {dense.memory_bytes() / 2**20:.1f} MiB")  # fmt: skip
    print("batch  moe_ms  dense_ms  moe/dense")
    for b in args.batch:
        t = interleaved({"moe": _decode_step(moe, b), "dense": _decode_step(dense, b)},
                        args.repeat)  # fmt: skip
        print(f"{b:5d}  {t['moe'] * 1e3:6.2f}  {t['dense'] * 1e3:8.2f}  "
              f"{t['moe'] / t['dense']:9.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
