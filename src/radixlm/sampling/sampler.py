"""Batched next-token selection: penalties, bias, masks, greedy or random draws, logprobs.

One decode step turns float32 logits `[B, V]` into one token per row:

1. `process_logits` (the *processed logits*), in this order: repetition
   penalty (HF style: over tokens in the prompt or the output, a positive
   logit is divided by the penalty and a negative one multiplied), frequency
   penalty (minus penalty × count of the token in the output), presence
   penalty (minus penalty once if the token is in the output), `logit_bias`
   (added), and while a row has fewer than `min_new_tokens` output tokens its
   eos ids and `stop_token_ids` are set to -inf (`ignore_eos` does not change
   this: it only tells the caller not to stop on eos).
2. Greedy rows (temperature < 1e-6 or top_k == 1) take the argmax of the
   processed logits (the first index on ties).
3. Sampled rows: `softmax(processed / temperature)`, then top-k (keep tokens
   whose probability is >= the k-th largest), top-p (keep the smallest
   most-probable head whose mass, renormalised after top-k, reaches top_p; the
   top token always stays), min-p (drop tokens below min_p × the largest
   probability). Each filter is a probability threshold, so tokens tied with
   a boundary token are kept with it and no result depends on how a sort
   orders ties. The draw is an inverse-CDF draw with one uniform per row:
   token i with probability `probs[i] / sum(probs)` (no renormalisation needed).
4. Logprobs (when asked): `log_softmax(processed logits)` — after penalties,
   bias and the min-tokens mask, before temperature, top-k, top-p and min-p —
   of the chosen token, plus the `top_logprobs_num` largest of the same
   distribution, sorted descending. `temperature_scaled_logprobs=True` uses
   `log_softmax(processed / temperature)` instead (temperature 1 for greedy
   rows), which is what SGLang returns for sampled rows by default.

Row independence: every operation acts on each row alone, and a feature a
row does not use is an exact no-op on that row (penalty 1 or 0, top_p 1, top_k
off, min_p 0), so a row's token does not depend on the other rows of the batch.

Seeds: a row whose params have a `seed` takes its uniform from a
counter-based generator keyed by (seed, number of output tokens so far),
computed with 64-bit integer tensor ops (SplitMix64). Its tokens are therefore
the same in any batch and at any row, given the same logits (and the same
device: float rounding of the softmax may differ between CPU and CUDA). Rows
without a seed use torch's RNG (or the `generator` passed to `sample`). Two
requests with the same seed and the same logits produce the same tokens —
give `n > 1` copies different seeds.

The batch loops only over requests, in Python, to turn lists into tensors.
Nothing waits for a CUDA device; on CPU, top-p takes one host decision (see
`TOP_P_HEAD`), which is free there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import torch

from radixlm.sampling.batch import SamplingBatch, row_uniforms
from radixlm.sampling.logprobs import gather_logprobs

# ------------------------------------------------------------ logit processing


def _token_counts(
    seqs: Sequence[Sequence[int]], vocab_size: int, device: torch.device
) -> torch.Tensor:
    """counts[b, t] = occurrences of token t in seqs[b]; [B, V] float32."""
    counts = torch.zeros(len(seqs) * vocab_size, dtype=torch.float32, device=device)
    flat = list(chain.from_iterable(seqs))
    if flat:
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long, device=device)
        rows = torch.repeat_interleave(
            torch.arange(len(seqs), device=device), lengths, output_size=len(flat)
        )
        toks = torch.tensor(flat, dtype=torch.long, device=device)
        counts.index_add_(0, rows * vocab_size + toks, torch.ones_like(toks, dtype=counts.dtype))
    return counts.view(len(seqs), vocab_size)


def apply_penalties(
    logits: torch.Tensor,
    batch: SamplingBatch,
    output_ids: Sequence[Sequence[int]],
    prompt_ids: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:
    """Apply repetition, frequency and presence penalties to `logits` [B, V] in place.

    Repetition (HF): for tokens in the row's prompt or output, `l / r` if
    `l > 0` else `l * r`. Frequency: `l -= f * count_in_output`. Presence:
    `l -= p` if the token is in the output. `prompt_ids` is required when a row
    has a repetition penalty. Returns `logits`.
    """
    if not batch.need_penalties:
        return logits
    counts = _token_counts(output_ids, batch.vocab_size, batch.device)  # [B, V]
    if batch.need_repetition:
        if prompt_ids is None:
            raise ValueError("prompt_ids are required when repetition_penalty != 1")
        rep = batch.repetition_penalties  # [B, 1]
        # Only rows with a penalty need their (possibly long) prompt scanned.
        rows = zip(prompt_ids, batch.repetition_rows, strict=True)
        prompts = [p if used else () for p, used in rows]
        seen = (counts > 0) | (_token_counts(prompts, batch.vocab_size, batch.device) > 0)
        penalised = torch.where(logits > 0, logits / rep, logits * rep)
        logits.copy_(torch.where(seen, penalised, logits))
    if batch.need_frequency:
        logits.sub_(batch.frequency_penalties * counts)
    if batch.need_presence:
        logits.sub_(batch.presence_penalties * (counts > 0).to(logits.dtype))
    return logits


def process_logits(
    logits: torch.Tensor,
    batch: SamplingBatch,
    output_ids: Sequence[Sequence[int]],
    prompt_ids: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:
    """The processed logits [B, V]: penalties, then logit_bias, then the min-tokens mask.

    Never modifies `logits`; returns `logits` itself when nothing applies this
    step (so do not modify the result in place either), else a new tensor.
    """
    masking = batch.masking_rows(output_ids) if batch.banned_rows is not None else []
    if not (batch.need_penalties or batch.bias_rows is not None or any(masking)):
        return logits
    out = logits.clone()
    apply_penalties(out, batch, output_ids, prompt_ids)
    if batch.bias_rows is not None:
        out.index_put_((batch.bias_rows, batch.bias_cols), batch.bias_values, accumulate=True)
    if any(masking):
        active = torch.tensor(masking, dtype=torch.bool, device=batch.device)  # [B]
        rows, cols = batch.banned_rows, batch.banned_cols
        out[rows, cols] = out[rows, cols].masked_fill(active[rows], float("-inf"))
    return out


# ------------------------------------------------------------------ filtering

# On CPU, top-p first looks for its boundary among this many most probable
# tokens (a partial sort) and sorts the whole vocabulary only when some row
# needs more. On CUDA the full sort is cheap and avoids a host round trip.
TOP_P_HEAD = 256


def _apply_top_k(probs: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Zero tokens below each row's k-th largest probability; ties at the k-th stay."""
    top = torch.topk(probs, batch.max_top_k, dim=-1, sorted=True).values  # [B, kmax]
    kth = top.gather(1, batch.top_ks.clamp(max=batch.max_top_k) - 1)  # [B, 1]
    kth = kth.masked_fill(batch.top_ks >= batch.vocab_size, 0.0)  # off: keep every token
    return probs.masked_fill(probs < kth, 0.0)


def _top_p_head(probs: torch.Tensor, batch: SamplingBatch, total: torch.Tensor) -> torch.Tensor:
    """Descending probabilities [B, K]: a prefix of each sorted row reaching top_p × total."""
    if probs.device.type == "cpu" and probs.shape[-1] > TOP_P_HEAD:
        head = torch.topk(probs, TOP_P_HEAD, dim=-1, sorted=True).values  # [B, K]
        reached = head.cumsum(dim=-1)[:, -1:] >= batch.top_ps * total  # [B, 1]
        if bool((reached | (batch.top_ps >= 1.0)).all()):
            return head
    return torch.sort(probs, dim=-1, descending=True).values  # [B, V]


def _apply_top_p(probs: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Keep the smallest most-probable head whose mass reaches top_p of the row's mass.

    Expressed as a probability threshold (the smallest kept value), so tokens
    tied with the last kept one stay too and the result does not depend on how
    a sort orders ties. Rows with top_p == 1 are untouched.
    """
    # A row's total mass (< 1 after top-k: top-p is relative to it). A sequential
    # cumsum, not sum(): torch may split one long row's sum across threads, so
    # sum() can round differently for the same row in batches of other sizes.
    total = probs.cumsum(dim=-1)[:, -1:]  # [B, 1]
    head = _top_p_head(probs, batch, total)  # [B, K] descending
    mass_before = head.cumsum(dim=-1) - head  # mass of the strictly earlier entries
    inside = mass_before < batch.top_ps * total  # [B, K]; always true for the first entry
    threshold = head.masked_fill(~inside, float("inf")).amin(dim=-1, keepdim=True)  # [B, 1]
    threshold = threshold.masked_fill(batch.top_ps >= 1.0, 0.0)
    return probs.masked_fill(probs < threshold, 0.0)


def filter_probs(probs: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Apply each row's top-k, then top-p, then min-p to probs [B, V], zeroing dropped tokens.

    Returns a new tensor (or `probs` itself when no row filters); rows are not
    renormalised. The most probable token of every row always survives, and
    tokens tied with a boundary token are kept with it.
    """
    if batch.need_top_k:
        probs = _apply_top_k(probs, batch)
    if batch.need_top_p:
        probs = _apply_top_p(probs, batch)
    if batch.need_min_p:
        threshold = batch.min_ps * probs.amax(dim=-1, keepdim=True)  # [B, 1]
        probs = probs.masked_fill(probs < threshold, 0.0)
    return probs


# ------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class SampleOutput:
    """The result of `sample`; tensors stay on the batch's device.

    `next_token_ids` [B] int64. With logprobs: `logprobs` [B] float32 of the
    chosen tokens, and when the largest requested top count k > 0,
    `top_logprobs_ids` [B, k] int64 and `top_logprobs` [B, k] float32 sorted
    descending (row i asked for `top_logprobs_num[i]` of them: use the first
    that many). Otherwise those are None.
    """

    next_token_ids: torch.Tensor
    logprobs: torch.Tensor | None = None
    top_logprobs_ids: torch.Tensor | None = None
    top_logprobs: torch.Tensor | None = None
    top_logprobs_num: tuple[int, ...] = ()

    def to_lists(
        self,
    ) -> tuple[list[int], list[float] | None, list[list[tuple[int, float]]] | None]:
        """(token ids, chosen logprobs or None, per-row [(token id, logprob)] or None).

        Copies to the host (one transfer per tensor); each row's top list is
        cut to the count that row asked for.
        """
        ids = self.next_token_ids.tolist()
        lps = None if self.logprobs is None else self.logprobs.tolist()
        if self.top_logprobs is None or self.top_logprobs_ids is None:
            return ids, lps, None
        top_ids = self.top_logprobs_ids.tolist()
        top_vals = self.top_logprobs.tolist()
        tops = [
            list(zip(r_ids[:k], r_vals[:k], strict=True))
            for r_ids, r_vals, k in zip(top_ids, top_vals, self.top_logprobs_num, strict=True)
        ]
        return ids, lps, tops


def draw_from_probs(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: token ids [B] from unnormalised probs [B, V] and uniforms [B, 1].

    Row b picks the first token whose cumulative mass (in vocabulary order,
    float64) exceeds `uniforms[b] * row total`, i.e. token i with probability
    `probs[i] / sum(probs)`; a zero-probability token is never picked (a
    rounding miss at the very end falls back to the row's argmax).
    """
    cdf = probs.to(torch.float64).cumsum(dim=-1)  # [B, V]
    target = uniforms * cdf[:, -1:]  # [B, 1], in [0, total)
    picked = torch.searchsorted(cdf, target, right=True).clamp_(max=probs.shape[-1] - 1)
    valid = probs.gather(1, picked) > 0  # [B, 1]
    return torch.where(valid, picked, probs.argmax(dim=-1, keepdim=True)).view(-1)


def _draw(
    logits: torch.Tensor,
    batch: SamplingBatch,
    output_ids: Sequence[Sequence[int]],
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Random tokens [B] from processed logits [B, V] (meaningless on greedy rows)."""
    probs = torch.softmax(logits / batch.temperatures, dim=-1)  # [B, V]
    probs = filter_probs(probs, batch)
    return draw_from_probs(probs, row_uniforms(batch, output_ids, generator))


def _top_counts(top_logprobs_num: int | Sequence[int], size: int) -> tuple[int, ...]:
    if isinstance(top_logprobs_num, int):
        return (max(0, top_logprobs_num),) * size
    if len(top_logprobs_num) != size:
        raise ValueError(f"top_logprobs_num has {len(top_logprobs_num)} entries for {size} rows")
    return tuple(max(0, int(k)) for k in top_logprobs_num)


def _check_inputs(
    logits: torch.Tensor, batch: SamplingBatch, output_ids: Sequence[Sequence[int]]
) -> None:
    if logits.shape != (batch.size, batch.vocab_size):
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} for a batch of "
            f"{batch.size} rows x {batch.vocab_size} tokens"
        )
    if len(output_ids) != batch.size:
        raise ValueError(f"output_ids has {len(output_ids)} rows for a batch of {batch.size}")


def sample(
    logits: torch.Tensor,
    batch: SamplingBatch,
    output_ids: Sequence[Sequence[int]],
    prompt_ids: Sequence[Sequence[int]] | None = None,
    *,
    generator: torch.Generator | None = None,
    return_logprobs: bool = False,
    top_logprobs_num: int | Sequence[int] = 0,
    temperature_scaled_logprobs: bool = False,
) -> SampleOutput:
    """Choose the next token of every row of `logits` [B, V] (see the module docstring).

    `output_ids[i]` are row i's tokens generated so far (they drive penalties,
    min_new_tokens and the seeded draw's step counter); `prompt_ids[i]` its
    prompt (needed only for repetition_penalty). `generator` feeds the rows
    without a seed. `logits` is not modified. The result stays on the device:
    nothing here waits for the device.
    """
    _check_inputs(logits, batch, output_ids)
    processed = process_logits(logits.float(), batch, output_ids, prompt_ids)  # [B, V]
    if batch.all_greedy:
        next_ids = processed.argmax(dim=-1)
    else:
        next_ids = _draw(processed, batch, output_ids, generator)
        if batch.any_greedy:
            next_ids = torch.where(batch.greedy_mask, processed.argmax(dim=-1), next_ids)
    if not return_logprobs:
        return SampleOutput(next_ids)
    counts = _top_counts(top_logprobs_num, batch.size)
    source = processed / batch.temperatures if temperature_scaled_logprobs else processed
    chosen, top_ids, top_vals = gather_logprobs(source, next_ids, max(counts))
    if top_ids.shape[1] == 0:
        return SampleOutput(next_ids, chosen, top_logprobs_num=counts)
    return SampleOutput(next_ids, chosen, top_ids, top_vals, counts)
