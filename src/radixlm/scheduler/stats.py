"""The scheduler's counters, and the snapshot of them (and of the KV pool) callers read."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from radixlm.scheduler.kv_manager import KVManager


@dataclass
class SchedulerStats:
    prompt_tokens: int = 0  # over first admissions
    cached_tokens: int = 0  # of those, served from the cache
    prefill_tokens: int = 0  # actually computed (includes recomputation after retraction)
    generated_tokens: int = 0
    decode_steps: int = 0
    jump_forward_tokens: int = 0  # output tokens that came from a grammar's forced text
    retractions: int = 0

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def snapshot(stats: SchedulerStats, kv: KVManager, running: int, waiting: int) -> dict[str, Any]:
    """Cache hit rate (in prompt tokens), the counters, KV usage, running and waiting counts.

    `token_usage` is the share of the pool held by requests (not free, not evictable).
    """
    pool, cache = kv.pool, kv.cache
    used = pool.total - pool.available_size() - cache.evictable_size
    return {
        "cache_hit_rate": stats.hit_rate,
        **asdict(stats),
        "num_running_reqs": running,
        "num_waiting_reqs": waiting,
        "token_usage": used / pool.total,
        "cached_tree_tokens": cache.total_size,
        "max_total_tokens": pool.total,
    }
