"""A scheduled batch -> flat token batch + paged attention context -> model forward -> logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radixlm.attention.paged import PagedContext
from radixlm.distributed.plan import broadcast
from radixlm.kvcache.ledger import SlotContents
from radixlm.kvcache.pool import KVPool
from radixlm.models.llama import LlamaForCausalLM


@dataclass
class ForwardItem:
    """One sequence of a forward: its new tokens and where its K/V live.

    `slots` ([prefix_len + len(new_ids)] int64) covers the cached prefix and
    the new tokens; the new tokens sit at positions prefix_len, prefix_len+1, ...
    `logit_from` asks for logits of every new token at position >= logit_from
    (prompt logprobs); otherwise only the last new token gets logits.
    """

    new_ids: list[int]
    slots: torch.Tensor
    prefix_len: int
    logit_from: int | None = None


@dataclass
class ForwardOutput:
    """`last` [B, vocab] float32: logits of each sequence's last new token.

    `extra[i]` ([k, vocab]) are sequence i's logits for positions
    logit_from .. last-1 (None when it did not ask for them).
    """

    last: torch.Tensor
    extra: list[torch.Tensor | None]


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, pool: KVPool) -> None:
        self.model = model
        self.pool = pool
        self.device = pool.device
        self.forwards = 0  # forwards run (under tensor parallelism: plans sent)
        tp = getattr(model, "tp", None)
        self._leader = tp is not None and tp.rank == 0  # sends each plan to the other ranks
        if self._leader:
            broadcast(pool.total)  # the worker ranks size their pools from it

    def forward(self, items: list[ForwardItem]) -> ForwardOutput:
        """Run one forward over `items` (writing their new K/V into the pool).

        Under tensor parallelism rank 0 first sends `items` to the other ranks,
        which run the same forward on their shards (`distributed.worker`).
        """
        self.forwards += 1
        if self._leader:
            broadcast(items)
        extend_lens = [len(it.new_ids) for it in items]
        ids = [t for it in items for t in it.new_ids]
        input_ids = torch.tensor(ids, dtype=torch.int64, device=self.device)
        out_cache_loc = torch.cat([it.slots[it.prefix_len :] for it in items])
        ctx = PagedContext(
            self.pool, [it.slots for it in items], [it.prefix_len for it in items],
            extend_lens, out_cache_loc,
        )  # fmt: skip
        if self.pool.ledger is not None:
            self.pool.ledger.record(out_cache_loc, input_ids, ctx.positions)
        rows, spans = self._logit_rows(items, extend_lens)
        logits = self.model(input_ids, ctx.positions, ctx, torch.tensor(rows, device=self.device))
        last_rows, extra = [], []
        for start, count in spans:
            last_rows.append(start + count - 1)
            extra.append(logits[start : start + count - 1] if count > 1 else None)
        return ForwardOutput(last=logits[last_rows], extra=extra)

    def slot_mismatches(self, claim: SlotContents) -> int:
        """How many claimed slots this rank's ledger says hold K/V of another token or
        position, summed over the tensor-parallel ranks: rank 0 first sends `claim` to the
        others (they answer in `distributed.worker`). Only for a pool with a ledger."""
        assert self.pool.ledger is not None, "the pool keeps no ledger (track_writes)"
        if self._leader:
            broadcast(claim)
        wrong = self.pool.ledger.mismatches(claim)
        tp = getattr(self.model, "tp", None)
        if tp is None or tp.size == 1:
            return wrong
        return int(tp.all_reduce(torch.tensor([wrong], device=self.device)))

    @staticmethod
    def _logit_rows(
        items: list[ForwardItem], extend_lens: list[int]
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """Flat-batch rows that need logits, and each item's (offset, count) among them."""
        rows: list[int] = []
        spans: list[tuple[int, int]] = []
        base = 0
        for it, n in zip(items, extend_lens, strict=True):
            first = n - 1
            if it.logit_from is not None:
                first = min(max(it.logit_from - it.prefix_len, 0), n - 1)
            spans.append((len(rows), n - first))
            rows.extend(range(base + first, base + n))
            base += n
        return rows, spans
