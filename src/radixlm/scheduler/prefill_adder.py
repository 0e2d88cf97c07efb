"""Admission: which waiting requests join the next prefill batch, and how much of each.

A request is admitted while the token budget allows it:

    budget = free slots + evictable cached slots
             - reserved decode room of every running (and newly admitted) request

where a request's reserved room is `remaining max_new_tokens × new_token_ratio`
(a ratio that decays while decoding goes well and jumps back after a
retraction). Prefill tokens per step are capped, and a prompt longer than the
chunk size is prefilled in chunks, one chunk per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from radixlm.config import SchedulerConfig
from radixlm.kvcache.radix_cache import common_prefix_len
from radixlm.scheduler.kv_manager import KVManager
from radixlm.scheduler.request import Req


@dataclass
class PrefillBatch:
    """Requests to extend this step: `extend_lens[i]` new tokens of `reqs[i]`."""

    reqs: list[Req] = field(default_factory=list)
    extend_lens: list[int] = field(default_factory=list)
    # The request left partially prefilled by this batch (continues next step).
    chunked: Req | None = None

    def __bool__(self) -> bool:
        return bool(self.reqs)


class PrefillAdder:
    def __init__(self, config: SchedulerConfig, kv: KVManager) -> None:
        self.config = config
        self.kv = kv

    def reserved(self, running: list[Req], ratio: float) -> int:
        """Slots to keep for the future decode tokens of `running`."""
        return int(sum(r.remaining_new_tokens() for r in running) * ratio)

    def build(
        self, ordered: list[Req], running: list[Req], chunked: Req | None, ratio: float
    ) -> PrefillBatch:
        """Admit from `ordered` (policy order); the in-progress `chunked` request goes first.

        Admitted requests are locked and hold their new slots on return.
        """
        cfg = self.config
        batch = PrefillBatch()
        budget = self.kv.available() - self.reserved(running, ratio)
        prefill_left = cfg.max_prefill_tokens
        chunk = cfg.chunked_prefill_size if cfg.chunked_prefill_size > 0 else None
        if chunked is not None:
            n = min(chunked.fill_len - chunked.kv_len, chunk or prefill_left)
            if not self.kv.extend(chunked, n):
                return batch
            self._add(batch, chunked, n)
            budget -= n
            prefill_left -= n
            if batch.chunked is not None:
                return batch
        slots_left = cfg.max_running_requests - len(running)
        for req in ordered:
            if len(batch.reqs) >= slots_left or prefill_left <= 0:
                break
            m = self.kv.match(req)
            if self._held_back(req, m.prefix_len, batch):
                continue
            extend = req.fill_len - m.prefix_len
            need = extend + int(req.remaining_new_tokens() * ratio)
            if need > budget and (batch.reqs or running):
                break  # wait for memory; head-of-line order is kept
            n = extend
            limit = min(prefill_left, chunk or extend)
            if n > limit:
                if chunk is None and not batch.reqs:
                    limit = n  # no chunking: a long prompt still runs, alone
                n = limit
            if not self.kv.lock_and_allocate(req, m, n):
                break
            self._add(batch, req, n)
            budget -= need
            prefill_left -= n
            if batch.chunked is not None:
                break
        return batch

    def _add(self, batch: PrefillBatch, req: Req, n: int) -> None:
        batch.reqs.append(req)
        batch.extend_lens.append(n)
        if req.kv_len < req.fill_len:  # slots already include this chunk
            batch.chunked = req

    def _held_back(self, req: Req, cached: int, batch: PrefillBatch) -> bool:
        """True if an admitted request shares a long uncached prefix with `req` (whose
        first `cached` tokens are cached).

        Computing that prefix once and letting `req` reuse it next step beats
        computing it twice in the same batch. "Long" is the threshold, or all of
        `req`'s uncached part when that is shorter (so n copies of one short
        prompt are still prefilled once).
        """
        threshold = self.config.in_batch_prefix_threshold
        if not batch.reqs or threshold <= 0 or not self.kv.cache.shares_prefixes:
            return False
        needed = min(threshold, req.max_prefix_len() - cached)
        if needed <= 0:
            return False
        fill = req.prefix_key(req.fill_len)  # tuples: compared in C, a run at a time
        for other in batch.reqs:
            if other.extra_key != req.extra_key:
                continue
            if common_prefix_len(fill, other.prefix_key(other.fill_len)) - cached >= needed:
                return True
        return False
