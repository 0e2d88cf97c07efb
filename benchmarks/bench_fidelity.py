"""How far each low-precision mode moves SmolLM2's logits from float32.

The reference is the embedded Q4_1 GGUF dequantized to float32 (`--dtype float32`,
`--quantization none`): what the quantized weights mean exactly. Each mode runs the
same ~500 tokens of English text (docs/architecture.md) in one prefill and reports
the mean KL(reference || mode) over the positions and the top-1 agreement.

    .venv/bin/python benchmarks/bench_fidelity.py [--tokens 500]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from radixlm.attention.paged import PagedContext, head_major_fits
from radixlm.config import LoadConfig
from radixlm.kvcache.pool import KVPool
from radixlm.loader import DEFAULT_MODEL, LoadedModel, load_model, resolve_model_path
from radixlm.tokenizer import load_tokenizer

MODES = {  # name -> LoadConfig options
    "float32 (reference)": {"dtype": "float32", "quantization": "none"},
    "bfloat16 dense": {"dtype": "bfloat16", "quantization": "none"},
    "int4, bfloat16 activations": {"dtype": "bfloat16", "activations": "bfloat16"},
    "int4, int8 activations": {"dtype": "bfloat16", "activations": "int8"},
}


def engine_pool(loaded: LoadedModel, tokens: int) -> KVPool:
    """A K/V pool for `tokens` tokens in the layout the engine picks for this model."""
    head_major = head_major_fits(loaded.config, loaded.dtype, loaded.device)
    return KVPool.for_model(loaded.config, loaded.dtype, loaded.device,
                            max_total_tokens=tokens + 64, head_major=head_major)  # fmt: skip


def prefill_logprobs(
    model: torch.nn.Module, pool: KVPool, ids: torch.Tensor, at: torch.Tensor
) -> torch.Tensor:
    """[len(at), vocab] float32 log-probabilities at positions `at` of one prefill of
    `ids` through `pool` (its slots are freed again)."""
    n = len(ids)
    slots = pool.alloc(n)
    ctx = PagedContext(pool, [slots], [0], [n], slots)
    with torch.inference_mode():
        out = model(ids, ctx.positions, ctx, at)
    pool.free(slots)
    return out.float().log_softmax(-1)


def mean_kl(ref: torch.Tensor, got: torch.Tensor) -> float:
    """Mean over rows of KL(ref || got), both log-probabilities."""
    return (ref.exp() * (ref - got)).sum(-1).mean().item()


def logits(options: dict[str, str], ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab] float32 log-probabilities of one prefill in that mode, through
    the engine's paged K/V pool."""
    loaded = load_model(LoadConfig(model=str(resolve_model_path(DEFAULT_MODEL)), **options),
                        progress=False)  # fmt: skip
    n = len(ids)
    return prefill_logprobs(loaded.model, engine_pool(loaded, n), torch.tensor(ids),
                            torch.arange(n))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=500)
    args = p.parse_args()
    text = (Path(__file__).parent.parent / "docs" / "architecture.md").read_text()
    tok = load_tokenizer(str(resolve_model_path(DEFAULT_MODEL)))
    ids = tok.encode(text)[: args.tokens]
    ref = None
    print(f"{len(ids)} tokens of docs/architecture.md\n")
    print("| mode | mean KL to float32 | top-1 agreement |\n|---|---:|---:|")
    for name, options in MODES.items():
        got = logits(options, ids)
        if ref is None:
            ref = got
            continue
        kl = mean_kl(ref, got)
        top1 = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
        print(f"| {name} | {kl:.2e} | {top1:.3f} |")


if __name__ == "__main__":
    main()
