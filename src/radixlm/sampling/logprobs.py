"""Log-probabilities of given tokens and of the most likely alternatives.

A logprob here is always `log_softmax(logits)[token]` of the float32 logits
passed in, computed as `logit - logsumexp(row)` so that no `[rows, vocab]`
log-softmax tensor is materialised. The chosen-token value and the top-k
values use the same arithmetic, so a token that is both chosen and in the top
k gets bit-identical numbers in both places.
"""

from __future__ import annotations

import torch


def gather_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, top_k: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logprobs of `token_ids` and the `top_k` most likely tokens of each row.

    logits: [N, V] float32; token_ids: [N] int64. Returns `(logprobs [N],
    top_ids [N, k] int64, top_logprobs [N, k])` with k = min(top_k, V); the top
    entries are sorted by descending logprob (equal values in no guaranteed
    order). Everything stays on the logits' device; nothing synchronises.
    """
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # [N, 1]
    chosen = logits.gather(1, token_ids.view(-1, 1)) - lse  # [N, 1]
    k = max(0, min(int(top_k), logits.shape[-1]))
    if k == 0:
        empty = logits.new_empty((logits.shape[0], 0))
        return chosen.squeeze(1), empty.long(), empty
    top_vals, top_ids = torch.topk(logits, k, dim=-1, sorted=True)  # [N, k]
    return chosen.squeeze(1), top_ids, top_vals - lse


def token_logprobs(
    logits: torch.Tensor,
    next_ids: torch.Tensor,
    top_k: int = 0,
    *,
    chunk_rows: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score a sequence: logprob of `next_ids[t]` under `logits[t]`, for every t.

    For prompt scoring, pass the logits of positions 0..T-1 and the prompt
    tokens at positions 1..T as `next_ids`. logits: [T, V] (any float dtype,
    computed in float32); next_ids: [T] int. Returns `(logprobs [T] float32,
    top_ids [T, k] int64, top_logprobs [T, k] float32)`, k = min(top_k, V), top
    entries sorted descending. Rows are processed `chunk_rows` at a time so the
    float32 temporaries stay bounded for long prompts. No penalties,
    temperature or masks are applied: these are the model's own probabilities.
    """
    if logits.dim() != 2 or next_ids.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits [T, V] and next_ids [T], got {tuple(logits.shape)} "
            f"and {tuple(next_ids.shape)}"
        )
    num_rows, vocab = logits.shape
    k = max(0, min(int(top_k), vocab))
    device = logits.device
    out_lp = torch.empty(num_rows, dtype=torch.float32, device=device)
    out_ids = torch.empty((num_rows, k), dtype=torch.long, device=device)
    out_vals = torch.empty((num_rows, k), dtype=torch.float32, device=device)
    ids = next_ids.to(device=device, dtype=torch.long)
    for start in range(0, num_rows, max(1, chunk_rows)):  # chunks of rows, not tokens
        end = min(start + chunk_rows, num_rows)
        chunk = logits[start:end].float()  # [c, V]
        lp, top_ids, top_vals = gather_logprobs(chunk, ids[start:end], k)
        out_lp[start:end] = lp
        out_ids[start:end] = top_ids
        out_vals[start:end] = top_vals
    return out_lp, out_ids, out_vals
