"""The single-sequence reference loop: generation with a contiguous KV cache (tests only).

The minimal path that exercises the model end to end: prefill the prompt,
then decode one token per step, greedy or sampled. The serving engine (with
the shared KV pool, the radix cache and continuous batching) is built on the
same model and attention interface; this stays as the simplest reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from radixlm.attention.dense import DenseContext, DenseKVCache
from radixlm.models.llama import LlamaForCausalLM


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")


def sample_next(
    logits: torch.Tensor, params: GenerationParams, generator: torch.Generator | None
) -> int:
    """Pick the next token from float32 logits [vocab]: argmax, or a filtered random draw."""
    if params.temperature == 0.0:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest head whose mass reaches top_p (the first token always stays).
        drop = sorted_probs.cumsum(-1) - sorted_probs >= params.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def generate_tokens(
    model: LlamaForCausalLM,
    prompt_ids: list[int],
    params: GenerationParams,
    eos_token_ids: tuple[int, ...] = (),
) -> Iterator[int]:
    """Yield generated token ids one at a time.

    Stops after `max_new_tokens`, or after yielding a stop token (an eos, unless
    `ignore_eos`, or one of `params.stop_token_ids`), or at the model's context length.
    """
    if not prompt_ids:
        raise ValueError("prompt_ids must not be empty")
    config = model.config
    if len(prompt_ids) >= config.context_length:
        raise ValueError(
            f"prompt of {len(prompt_ids)} tokens reaches the context length {config.context_length}"
        )
    max_new = min(params.max_new_tokens, config.context_length - len(prompt_ids))
    device = model.embed_tokens.weight.device
    cache = DenseKVCache(config, len(prompt_ids) + max_new, model.embed_tokens.weight.dtype, device)
    stops = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_token_ids))
    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)

    tokens = torch.tensor(prompt_ids, dtype=torch.long, device=device)
    for _ in range(max_new):
        positions = torch.arange(cache.length, cache.length + len(tokens), device=device)
        ctx = DenseContext([cache], [len(tokens)])
        last = torch.tensor([len(tokens) - 1], device=device)
        logits = model(tokens, positions, ctx, logits_indices=last)[0]
        ctx.commit()
        token = sample_next(logits, params, generator)
        yield token
        if token in stops:
            return
        tokens = torch.tensor([token], dtype=torch.long, device=device)
