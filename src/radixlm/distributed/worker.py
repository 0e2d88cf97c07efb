"""The loop of a rank > 0: hold this rank's shard of the model and of every KV slot,
and run each forward rank 0 plans. No scheduler and no tree here: rank 0's radix
cache owns slot allocation, so the cache stays one tree over all ranks."""

from __future__ import annotations

import logging

from radixlm.config import EngineConfig
from radixlm.distributed.group import TPGroup
from radixlm.distributed.plan import broadcast
from radixlm.executor.model_runner import ModelRunner
from radixlm.kvcache.pool import KVPool
from radixlm.loader import load_model

log = logging.getLogger(__name__)


def run_worker(config: EngineConfig, tp: TPGroup) -> int:
    """Load this rank's shard, then run plans until rank 0 sends None; return forwards run."""
    loaded = load_model(config.load, progress=False, tp=tp)
    total = broadcast()  # rank 0's pool size: the same slots on every rank
    pool = KVPool.for_model(loaded.config, loaded.dtype, loaded.device,
                            max_total_tokens=total, page_size=config.cache.page_size)  # fmt: skip
    runner = ModelRunner(loaded.model, pool)
    steps = 0
    while (items := broadcast()) is not None:
        runner.forward(items)  # writes this rank's K/V heads; logits are rank 0's
        steps += 1
    log.info("tensor-parallel rank %d stopped after %d forwards", tp.rank, steps)
    return steps
