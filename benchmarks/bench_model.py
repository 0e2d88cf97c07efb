"""Prefill and decode speed of radixlm's model vs transformers on the same weights.

Both load the same file (by default the embedded SmolLM2-135M-Instruct GGUF:
transformers dequantizes it to the chosen dtype, radixlm loads it as
`--quantization` says, as the server would) and run in this one process, alternately:

    .venv/bin/python benchmarks/bench_model.py [--model PATH] [--dtype float32] \
        [--quantization auto] [--prefill-attention paged] \
        [--prefill-tokens 512] [--decode-tokens 64] [--repeats 3]

Prints a markdown table of prefill tokens/s (one forward over the prompt) and
batch-1 decode tokens/s (one token per step through each side's KV cache),
and the radixlm / transformers ratio. radixlm's prefill attends through its
contiguous per-sequence cache (`dense`) or, with `--prefill-attention paged`,
through the KV pool as the engine does (where the native extend kernel runs).
Best of `--repeats` runs for each, the two systems taking turns.
"""

from __future__ import annotations

import argparse
import platform

import torch
from timing import interleaved

from radixlm.attention.dense import DenseContext, DenseKVCache
from radixlm.attention.paged import PagedContext
from radixlm.config import LoadConfig
from radixlm.kvcache.pool import KVPool, PoolShape
from radixlm.loader import load_model


def load_transformers(path, dtype):
    from transformers import AutoModelForCausalLM

    if path.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.eval()


def radixlm_runs(loaded, prompt: torch.Tensor, decode_tokens: int, paged: bool):
    model, cfg = loaded.model, loaded.config
    n = len(prompt)
    pool = KVPool(PoolShape.of(cfg, loaded.dtype), n, loaded.device) if paged else None
    slots = pool.alloc(n) if pool is not None else None

    def prefill() -> None:
        if pool is not None:
            ctx = PagedContext(pool, [slots], [0], [n], slots)
        else:
            ctx = DenseContext([DenseKVCache(cfg, n, loaded.dtype, loaded.device)], [n])
        model(prompt, torch.arange(n), ctx, torch.tensor([n - 1]))

    def decode() -> None:
        cache = DenseKVCache(cfg, 1 + decode_tokens, loaded.dtype, loaded.device)
        token = prompt[:1]
        for step in range(decode_tokens):
            ctx = DenseContext([cache], [1])
            logits = model(token, torch.tensor([step]), ctx)
            ctx.commit()
            token = logits.argmax(-1)

    return prefill, decode


def transformers_runs(model, prompt: torch.Tensor, decode_tokens: int):
    from transformers import DynamicCache

    ids = prompt.unsqueeze(0)

    @torch.inference_mode()
    def prefill() -> None:
        model(ids, use_cache=True, logits_to_keep=1)

    @torch.inference_mode()
    def decode() -> None:
        cache = DynamicCache()
        token = ids[:, :1]
        for _ in range(decode_tokens):
            out = model(token, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            token = out.logits[:, -1].argmax(-1, keepdim=True)

    return prefill, decode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--quantization", default="auto", choices=["auto", "none", "int8", "int4"])
    ap.add_argument("--prefill-attention", default="dense", choices=["dense", "paged"])
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    loaded = load_model(
        LoadConfig(model=args.model, dtype=args.dtype, device="cpu",
                   quantization=args.quantization),
        progress=False,
    )
    ref = load_transformers(loaded.path, loaded.dtype)
    torch.manual_seed(0)
    prompt = torch.randint(0, loaded.config.vocab_size, (args.prefill_tokens,))

    ours = radixlm_runs(loaded, prompt, args.decode_tokens, args.prefill_attention == "paged")
    theirs = transformers_runs(ref, prompt, args.decode_tokens)
    systems = {"radixlm": ours, "transformers": theirs}
    prefill = interleaved({k: v[0] for k, v in systems.items()}, args.repeats, reduce=min)
    decode = interleaved({k: v[1] for k, v in systems.items()}, args.repeats, reduce=min)
    results = {
        k: (args.prefill_tokens / prefill[k], args.decode_tokens / decode[k]) for k in systems
    }
    print(
        f"model {loaded.path.name}, {args.dtype}, quantization {args.quantization}, "
        f"radixlm prefill attention {args.prefill_attention}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}\n"
    )
    print(f"| system | prefill tok/s ({args.prefill_tokens} tokens) | decode tok/s (batch 1) |")
    print("|---|---:|---:|")
    for name, (p, d) in results.items():
        print(f"| {name} | {p:,.0f} | {d:,.1f} |")
    (rp, rd), (tp, td) = results["radixlm"], results["transformers"]
    print(f"| ratio radixlm/transformers | {rp / tp:.2f}x | {rd / td:.2f}x |")


if __name__ == "__main__":
    main()
