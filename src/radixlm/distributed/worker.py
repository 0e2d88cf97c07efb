"""The loop of a rank > 0: hold this rank's shard of the model and of every KV slot,
and run each forward rank 0 plans. No scheduler and no tree here: rank 0's radix
cache owns slot allocation, so the cache stays one tree over all ranks. In debug
mode rank 0's integrity check also sends the tree's slot contents, and every rank
checks its own shard against them (`ModelRunner.slot_mismatches`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from radixlm.attention.paged import head_major_fits
from radixlm.config import EngineConfig
from radixlm.distributed.group import TPGroup
from radixlm.distributed.plan import broadcast
from radixlm.executor.model_runner import ModelRunner
from radixlm.kvcache.ledger import SlotContents
from radixlm.kvcache.pool import KVPool
from radixlm.loader import load_model

log = logging.getLogger(__name__)


@dataclass
class WorkerSummary:
    """What a rank > 0 did: forwards run, slots checked for rank 0, and how many were wrong."""

    forwards: int = 0
    slots_checked: int = 0
    wrong: int = 0


def run_worker(config: EngineConfig, tp: TPGroup) -> WorkerSummary:
    """Load this rank's shard, then run plans until rank 0 sends None."""
    loaded = load_model(config.load, progress=False, tp=tp)
    total = broadcast()  # rank 0's pool size: the same slots on every rank
    pool = KVPool.for_model(loaded.config, loaded.dtype, loaded.device,
                            max_total_tokens=total, page_size=config.cache.page_size,
                            head_major=head_major_fits(loaded.config, loaded.dtype,
                                                       loaded.device))  # fmt: skip
    if config.cache.debug:  # as rank 0 does (engine.setup): answer its slot-content checks
        pool.track_writes()
    runner = ModelRunner(loaded.model, pool)
    done = WorkerSummary()
    while (plan := broadcast()) is not None:
        if isinstance(plan, SlotContents):  # rank 0's integrity check: answer with ours
            done.slots_checked += plan.slots.numel()
            if wrong := runner.slot_mismatches(plan):
                done.wrong += wrong
                log.error("rank %d: %d (rank, slot) pairs hold another token", tp.rank, wrong)
            continue
        runner.forward(plan)  # writes this rank's K/V heads; logits are rank 0's
        done.forwards += 1
    log.info("tensor-parallel rank %d stopped after %d forwards", tp.rank, done.forwards)
    return done
