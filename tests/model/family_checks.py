"""What the family tests share: both models on one tiny checkpoint, prompts sharing prefixes."""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from radixlm.attention.dense import DenseContext, DenseKVCache
from radixlm.config import LoadConfig
from radixlm.loader import LoadedModel, load_model

TOL = 1e-4


@cache
def load_pair(model_dir: Path) -> tuple[LoadedModel, torch.nn.Module]:
    """(radixlm float32 model, transformers float32 model with eager attention)."""
    ours = load_model(LoadConfig(model=str(model_dir), dtype="float32"), progress=False)
    ref = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    return ours, ref


def ref_logits(ref, ids: list[int]) -> torch.Tensor:
    """transformers' logits [n, vocab] of one forward over the whole sequence."""
    with torch.no_grad():
        return ref(torch.tensor([ids])).logits[0].float()


def ref_incremental_logits(ref, ids: list[int], prefill: int) -> torch.Tensor:
    """transformers' logits through its KV cache: `prefill` tokens, then one per step."""
    rows = []
    with torch.no_grad():
        out = ref(torch.tensor([ids[:prefill]]), use_cache=True)
        rows.append(out.logits[0])
        for t in ids[prefill:]:
            out = ref(torch.tensor([[t]]), cache=out.past_key_values, use_cache=True)
            rows.append(out.logits[0])
    return torch.cat(rows).float()


def dense_steps(loaded: LoadedModel, ids: list[int], prefill: int) -> torch.Tensor:
    """Our logits through a dense KV cache: `prefill` tokens, then one per step."""
    cache_ = DenseKVCache(loaded.config, len(ids), loaded.dtype, loaded.device)
    rows = []
    for chunk in [ids[:prefill]] + [[t] for t in ids[prefill:]]:
        positions = torch.arange(cache_.length, cache_.length + len(chunk))
        ctx = DenseContext([cache_], [len(chunk)])
        rows.append(loaded.model(torch.tensor(chunk), positions, ctx))
        ctx.commit()
    return torch.cat(rows)


def shared_prefix_prompts(seed: int, n: int = 16, vocab: int = 384) -> list[list[int]]:
    """n prompts sharing prefixes at several depths: a 20-token trunk (longer than the
    tiny models' window of 8), branches off it, twigs off those, and loners."""
    rng = random.Random(seed)
    tok = lambda k: [rng.randrange(3, vocab) for _ in range(k)]  # noqa: E731
    trunk = tok(20)
    branches = [trunk + tok(rng.randrange(3, 12)) for _ in range(3)]
    prompts = []
    for i in range(n):
        kind = i % 4
        if kind == 3:
            prompts.append(tok(rng.randrange(4, 24)))
        else:
            base = branches[i % len(branches)] if kind else trunk
            prompts.append(base + tok(rng.randrange(1, 8)))
    rng.shuffle(prompts)
    return prompts
