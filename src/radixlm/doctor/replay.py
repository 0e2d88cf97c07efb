"""Replay a trace through the real `RadixCache`, `SchedulePolicy` and `PrefillAdder`, no model.

The replay is the scheduler's step loop (`scheduler.Scheduler.step`) with the
forward pass left out: the same waiting queue ordered by the same policy, the
same admission by the same `PrefillAdder` over the same `KVManager`, `KVPool`
and `RadixCache` (a pool with one 1-wide layer, so it costs a few bytes a slot),
the same chunked prefill, decode-slot reservation and retraction. A request
"generates" the output the trace recorded, one unit per decode step, and ends
after as many units as the trace says. Requests join the queue when the engine
had run as many steps as the trace's `step` says: the clock is engine steps, so
a replay of a trace at the server's own pool size and policy makes the
server's decisions again.

Speed: a run of k decode steps with nothing waiting and no arrival due is done
as one jump: every running request gets its next k slots (fewer if it ends
sooner) in one allocation, and the requests that end within the run are
released in the order the steps would have released them. That is exact:
- when nobody ends before the last step, no tree lookup happens in between, and
  an allocation evicts the same least-recently-used leaves whether it is made in
  one piece or in k;
- when some end earlier, the jump is taken only if the free slots cover the
  whole run, so no step would have evicted, and the tree sees the same inserts
  in the same order (which slot ids a request got is all that differs).
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from radixlm.config import SchedulerConfig
from radixlm.doctor.units import ReplayRequest
from radixlm.kvcache.activity import EvictionLog
from radixlm.kvcache.pool import KVPool, PoolShape
from radixlm.kvcache.prefix_cache import TreeNode
from radixlm.kvcache.radix_cache import RadixCache
from radixlm.sampling.params import SamplingParams
from radixlm.scheduler.kv_manager import KVManager
from radixlm.scheduler.policy import SchedulePolicy
from radixlm.scheduler.prefill_adder import PrefillAdder, PrefillBatch
from radixlm.scheduler.request import FinishReason, Req, ReqState

_SHAPE = PoolShape(1, 1, 1, torch.float16)  # 4 bytes of K/V per slot: storage is never read


class _CountingLog(EvictionLog):
    """Counts evictions without keeping recent ones (only the live cache view shows them)."""

    def record(self, node: TreeNode) -> None:
        self.total_nodes += 1
        self.total_tokens += len(node.key)


class LedgerRadixCache(RadixCache):
    """The real `RadixCache`, which also books who evicted whose tokens.

    `actor` is the tenant whose allocation runs (`LedgerKVManager` sets it; None for
    a decode step of several tenants); each evicted leaf adds its length to
    `evicted[(actor, leaf's namespace)]`.
    """

    def __init__(self, pool: KVPool) -> None:
        super().__init__(pool)
        self.evictions = _CountingLog()
        self.actor: Hashable | None = None
        self.evicted: dict[tuple[Any, Any], int] = defaultdict(int)

    def _remove_leaf(self, node: TreeNode) -> TreeNode:
        self.evicted[(self.actor, node.extra_key)] += len(node.key)
        return super()._remove_leaf(node)


class LedgerKVManager(KVManager):
    """The real `KVManager`, which tells the cache whose allocation may evict."""

    cache: LedgerRadixCache

    def lock_and_allocate(self, req: Req, m: Any, extend_len: int) -> bool:
        self.cache.actor = req.extra_key
        return super().lock_and_allocate(req, m, extend_len)

    def extend(self, req: Req, n: int) -> bool:
        self.cache.actor = req.extra_key
        return super().extend(req, n)

    def reserve_decode(self, reqs: list[Req], sizes: list[int]) -> bool:
        tenants = {r.extra_key for r in reqs}
        self.cache.actor = tenants.pop() if len(tenants) == 1 else None  # None: several
        return super().reserve_decode(reqs, sizes)


@dataclass(eq=False)
class ReplayReq(Req):
    """A `Req` that knows its trace request and after how many output units it ends."""

    trace: ReplayRequest | None = None
    goal: int = 0


@dataclass
class ReplayResult:
    """Hit counts of one replay (tokens); `cached[i]` is request i's cached prompt tokens."""

    cache_tokens: int
    policy: str
    prompt_tokens: int = 0
    cached_tokens: int = 0
    cached: list[int] = field(default_factory=list)
    evicted: dict[tuple[Any, Any], int] = field(default_factory=dict)
    too_long: int = 0  # requests that cannot fit this pool (left out)
    steps: int = 0
    seconds: float = 0.0

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"cache_tokens": self.cache_tokens, "policy": self.policy,
                "hit_rate": self.hit_rate, "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens, "too_long": self.too_long,
                "steps": self.steps, "seconds": self.seconds}  # fmt: skip


class Replay:
    """One replay of `requests` at a pool of `cache_tokens` under scheduler config `cfg`.

    `unit` is the tokens per unit (the trace's hash page size, 1 for token ids);
    pool size and the scheduler's token limits are divided by it. `jumps=False` runs
    every decode step on its own (the same result, slower; for checking); `check`
    runs the cache's integrity check at the end.
    """

    def __init__(self, requests: Sequence[ReplayRequest], cache_tokens: int, cfg: SchedulerConfig,
                 context_length: int, unit: int = 1, jumps: bool = True,
                 check: bool = True) -> None:  # fmt: skip
        self.unit, self.jumps, self.check = unit, jumps, check
        self.cfg = _in_units(cfg, unit)
        units = max(cache_tokens // unit, 16)
        with torch.inference_mode():  # inference tensors: see `run`
            self.pool = KVPool(_SHAPE, units)
            self.cache = LedgerRadixCache(self.pool)
        self.kv = LedgerKVManager(self.pool, self.cache)
        c = self.cfg
        self.policy = SchedulePolicy(c.schedule_policy, self.kv.match, self.cache.root,
                                     c.fcfs_fallback_queue_len, c.seed)  # fmt: skip
        self.adder = PrefillAdder(c, self.kv)
        self.capacity = min(units, max(context_length // unit, 1))
        self.pending = deque(sorted(requests, key=lambda r: (r.step, r.index)))
        self.result = ReplayResult(cache_tokens, c.schedule_policy.value)
        self.result.cached = [0] * (max((r.index for r in requests), default=-1) + 1)
        self.waiting: list[Req] = []
        self.running: list[Req] = []
        self.chunked: Req | None = None
        self.ratio = c.init_new_token_ratio
        self.steps = 0
        self._params: dict[int, SamplingParams] = {}

    def run(self) -> ReplayResult:
        """Replay every request; returns the hit counts (tokens) and the eviction ledger.

        Torch runs one intra-op thread meanwhile (restored after): the replay's tensors
        are small, and a second spinning OpenMP worker on a one-core pin made the
        integrity check's `torch.unique` of 65,536 slots take 180 ms instead of 2.5 ms.
        It runs in inference mode, as the pool was made: the slot tensors then carry no
        autograd or version-counter state, and each of the many small tensor ops (slice,
        clone, cat) costs 0.6-1.3 us less (benchmarks/replay.md).
        """
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                return self._run()
        finally:
            torch.set_num_threads(threads)

    def _run(self) -> ReplayResult:
        t0 = time.perf_counter()
        while self.pending or self.waiting or self.running or self.chunked:
            while self.pending and self.pending[0].step <= self.steps:
                self._arrive(self.pending.popleft())
            if not (self.waiting or self.running or self.chunked):
                if self.pending:
                    self.steps = self.pending[0].step  # idle until the next arrival
                continue
            self._step()
        if self.check:  # O(pool size): the slot accounting, as the engine checks when idle
            self.cache.check_integrity()
        r = self.result
        r.evicted, r.steps = dict(self.cache.evicted), self.steps
        r.seconds = time.perf_counter() - t0
        return r

    # -- arrivals --------------------------------------------------------------------

    def _arrive(self, rr: ReplayRequest) -> None:
        if len(rr.key) + rr.max_new > self.capacity:
            self.result.too_long += 1
            return
        params = self._params.get(rr.max_new)
        if params is None:  # frozen, so one object serves every request of that length
            params = self._params[rr.max_new] = SamplingParams(max_new_tokens=rr.max_new)
        # input_ids is the trace's own list: a Req never changes its prompt.
        req = ReplayReq(rid=str(rr.index), input_ids=rr.key, params=params, extra_key=rr.tenant,
                        return_logprob=rr.logprob_start >= 0, logprob_start_len=rr.logprob_start,
                        trace=rr, goal=min(len(rr.output), rr.max_new))  # fmt: skip
        self.waiting.append(req)

    # -- one step (Scheduler.step without the model) ------------------------------------

    def _step(self) -> None:
        if self.waiting or self.chunked:
            ordered = self.policy.order(self.waiting, chunk_first=self.chunked is not None)
            batch = self.adder.build(ordered, self.running, self.chunked, self.ratio)
            if batch:
                self._prefill(batch)
                self.steps += 1
                return
        if self.running:
            self._decode()
        else:
            self.steps += 1

    def _prefill(self, batch: PrefillBatch) -> None:
        admitted = {id(r) for r in batch.reqs}
        self.waiting = [r for r in self.waiting if id(r) not in admitted]
        for req in batch.reqs:
            if not req.admitted_once:
                req.admitted_once = True
                self._count(req)
            req.state = ReqState.RUNNING
        self.chunked = batch.chunked
        for req in batch.reqs:
            if req is batch.chunked:
                continue
            req.input_logprobs_done = True
            if req.remaining_new_tokens() <= 0 or req.goal == 0:
                self._finish(req)
            else:
                self._emit(req, 1)
        for req in batch.reqs:
            if not req.finished:
                self.kv.cache_unfinished(req)
                if req is not batch.chunked:
                    self.running.append(req)

    def _decode(self) -> None:
        sizes = self._jump()
        if sizes is not None:
            k = max(sizes)
            ok = self.kv.reserve_decode(self.running, sizes)
            assert ok, "a jump is taken only when its slots fit"
            # Released in step order (stable: running order within a step), as k steps would.
            ending = sorted(zip(sizes, range(len(sizes)), self.running, strict=True))
            for n, _, req in ending:
                self._emit(req, n)
        elif not self._reserve_one():
            self.steps += 1
            return
        else:
            k = 1
            for req in list(self.running):
                self._emit(req, 1)
        self.running = [r for r in self.running if not r.finished]
        c = self.cfg
        self.ratio = max(c.min_new_token_ratio, self.ratio - k * c.new_token_ratio_decay)
        self.steps += k

    def _jump(self) -> list[int] | None:
        """The output units each running request gets in a run of decode steps done as
        one (see the module docstring; the longest is the run's length), or None when
        the next step runs alone."""
        if self.waiting or self.chunked or not self.jumps:
            return None
        left = [r.goal - len(r.output_ids) for r in self.running]  # type: ignore[attr-defined]
        k = max(left)
        if self.pending:
            k = min(k, self.pending[0].step - self.steps)
        if k <= 1:
            return None
        sizes = [min(k, n) for n in left]
        if sum(sizes) <= self.kv.pool.available_size():
            return sizes  # no step evicts: requests may end inside the run
        k = min(k, *left)  # the first to end ends the run
        if k <= 1 or self.kv.available() < k * len(self.running):
            return None
        return [k] * len(left)

    def _reserve_one(self) -> bool:
        """One slot for every running request, retracting as `Scheduler` does when short."""
        while self.running:
            if self.kv.reserve_decode(self.running, [1] * len(self.running)):
                return True
            if len(self.running) == 1 and self.chunked is None:
                self._finish(self.running.pop())  # the server raises here; the replay gives up
                return False
            victim = min(reversed(self.running), key=lambda r: len(r.output_ids))
            self.running.remove(victim)
            self.kv.release(victim)
            victim.state = ReqState.WAITING
            self.waiting.insert(0, victim)
            c = self.cfg
            self.ratio = min(1.0, max(self.ratio, c.init_new_token_ratio) + 0.1)
        return False

    # -- tokens and finishing ------------------------------------------------------------

    def _emit(self, req: ReplayReq, n: int) -> None:
        """Append the next n recorded output units; finish the request at its recorded length."""
        have = len(req.output_ids)
        req.output_ids.extend(req.trace.output[have : have + n])
        if have + n >= req.goal:
            self._finish(req)

    def _finish(self, req: Req) -> None:
        req.finish(FinishReason("length", length=len(req.output_ids)))
        self.kv.release(req)
        req.state = ReqState.FINISHED
        if req in self.running:
            self.running.remove(req)
        if req is self.chunked:
            self.chunked = None

    def _count(self, req: ReplayReq) -> None:
        rr = req.trace
        cached = req.cache_protected_len
        if self.unit > 1:
            cached = min(cached * self.unit, rr.prompt_tokens - 1)
        self.result.cached[rr.index] = cached
        self.result.prompt_tokens += rr.prompt_tokens
        self.result.cached_tokens += cached


def _in_units(cfg: SchedulerConfig, unit: int) -> SchedulerConfig:
    if unit == 1:
        return cfg
    return dataclasses.replace(
        cfg,
        max_prefill_tokens=max(cfg.max_prefill_tokens // unit, 1),
        chunked_prefill_size=cfg.chunked_prefill_size // unit if cfg.chunked_prefill_size > 0
        else cfg.chunked_prefill_size,
        in_batch_prefix_threshold=-(-cfg.in_batch_prefix_threshold // unit),
    )  # fmt: skip


def scheduler_config(
    header_scheduler: dict[str, Any], policy: str | None = None
) -> SchedulerConfig:
    """The server's `SchedulerConfig` from a trace header's dict, with `policy` if given."""
    known = {f.name for f in dataclasses.fields(SchedulerConfig)}
    kwargs = {k: v for k, v in header_scheduler.items() if k in known}
    if policy is not None:
        kwargs["schedule_policy"] = policy
    return SchedulerConfig(**kwargs)


def replay(requests: Sequence[ReplayRequest], cache_tokens: int, cfg: SchedulerConfig,
           context_length: int, unit: int = 1, check: bool = True) -> ReplayResult:  # fmt: skip
    """Replay `requests` at a pool of `cache_tokens` tokens; see `Replay`."""
    return Replay(requests, cache_tokens, cfg, context_length, unit, check=check).run()
