"""The scheduler loop: each step runs one prefill batch or one decode step.

Continuous batching: requests join the running set after their prefill and
leave it when they finish, between any two steps. Prefill has priority; a
decode step runs when nothing can be admitted. The parts: `SchedulePolicy`
orders the queue, `PrefillAdder` admits, `KVManager` owns the slot life
cycle, `ModelRunner` runs the model, `sampling.sample` picks tokens,
`Constraints` applies grammars, and `Finisher` decides when a request ends.

Jump-forward (`jump_forward`): when a request's grammar forces a string, its
next decode step feeds the string's tokens as a draft and keeps each one only
while the model agrees.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from radixlm.config import SchedulerConfig
from radixlm.executor.model_runner import ForwardItem, ModelRunner
from radixlm.kvcache.activity import CacheUsage
from radixlm.kvcache.prefix_cache import IntegrityError, PrefixCache
from radixlm.models.llama import LlamaForCausalLM
from radixlm.sampling.batch import SamplingBatch
from radixlm.sampling.sampler import sample
from radixlm.scheduler.constraints import Constraints
from radixlm.scheduler.finisher import Finisher
from radixlm.scheduler.jump_forward import plan_draft, verify_drafts
from radixlm.scheduler.kv_manager import KVManager
from radixlm.scheduler.logprob_collector import record_input_logprobs, record_output_logprobs
from radixlm.scheduler.policy import SchedulePolicy
from radixlm.scheduler.prefill_adder import PrefillAdder, PrefillBatch
from radixlm.scheduler.request import FinishReason, Req, ReqState, StepOutput
from radixlm.scheduler.stats import SchedulerStats, snapshot

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self,
        model: LlamaForCausalLM,
        cache: PrefixCache,
        config: SchedulerConfig,
        finisher: Finisher,
        constraints: Constraints | None = None,
    ) -> None:
        self.config = config
        self.constraints = constraints or Constraints(None, None)
        self.model_config = model.config
        self.kv = KVManager(cache.pool, cache)
        self.runner = ModelRunner(model, self.kv.pool)
        root = cache.root if cache.shares_prefixes else None
        self.policy = SchedulePolicy(
            config.schedule_policy, self.kv.match, root, config.fcfs_fallback_queue_len, config.seed
        )
        self.adder = PrefillAdder(config, self.kv)
        self.finisher = finisher
        self.waiting: list[Req] = []
        self.running: list[Req] = []
        self.chunked: Req | None = None
        self.new_token_ratio = config.init_new_token_ratio
        self._pending: list[StepOutput] = []  # aborts of waiting requests, reported next step
        self.stats = SchedulerStats()
        self.usage = CacheUsage()  # per-namespace counters and node hits (the cache view)

    # -- requests in and out -------------------------------------------------------

    @property
    def capacity(self) -> int:
        """The most tokens (prompt + output) one request may ever hold."""
        return min(self.kv.pool.total, self.model_config.context_length)

    def add_request(self, req: Req) -> None:
        """Queue a request; raises ValueError if it can never fit."""
        if not req.input_ids:
            raise ValueError("the prompt is empty")
        need = len(req.input_ids) + req.params.max_new_tokens
        if need > self.capacity:
            raise ValueError(
                f"prompt ({len(req.input_ids)} tokens) + max_new_tokens "
                f"({req.params.max_new_tokens}) = {need} exceeds the limit of {self.capacity} "
                f"tokens (context length {self.model_config.context_length}, "
                f"KV pool {self.kv.pool.total})"
            )
        self.constraints.start(req)
        self.finisher.start(req)
        self.waiting.append(req)

    def abort(self, rid: str) -> bool:
        """End request `rid` wherever it is; return False if it is unknown or done."""
        reason = FinishReason("abort", message="aborted by the caller")
        for req in self.waiting:
            if req.rid == rid:
                self.waiting.remove(req)
                req.finish(reason)
                req.state = ReqState.FINISHED
                self._pending.append(StepOutput(req, [], self.finisher.finish_text(req), True))
                return True
        for req in self.admitted():
            if req.rid == rid:
                req.finish(reason)
                self._retire(req, [], "")
                return True
        return False

    def admitted(self) -> list[Req]:
        """The requests holding K/V slots: the running ones and the chunked prefill."""
        return [*self.running, *([self.chunked] if self.chunked else [])]

    def in_flight(self) -> list[Req]:
        """Every request not yet finished: queued, running, or mid chunked prefill."""
        return [*self.waiting, *self.admitted()]

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.chunked or self._pending)

    # -- one step -------------------------------------------------------------

    def step(self) -> list[StepOutput]:
        """Run one prefill batch, or else one decode step; return what each request got."""
        outputs, self._pending = self._pending, []
        ready = self._ready_waiting(outputs)
        if ready or self.chunked:
            ordered = self.policy.order(ready, chunk_first=self.chunked is not None)
            batch = self.adder.build(ordered, self.running, self.chunked, self.new_token_ratio)
            if batch:
                self._guarded(batch.reqs, outputs, self._run_prefill, batch, outputs)
                return outputs
        if self.running:
            self._guarded(list(self.running), outputs, self._run_decode, outputs)
        elif not outputs and self.waiting:
            Constraints.wait_for_compiles(self.waiting, timeout=0.01)  # idle until one is ready
        return outputs

    def _guarded(self, reqs: list[Req], outputs: list[StepOutput], run: Any, *args: Any) -> None:
        """`run(*args)`, the step of batch `reqs`; if it raises, fail the batch, not the engine.

        Every request of the batch still in flight ends at once with an internal
        error (`FinishReason.internal_error`, reported in `outputs`); its own
        slots are freed and its lock released, nothing of it is cached. Other
        requests (queued, or running outside the batch) go on. Raises
        `SchedulerBroken` when the pool and tree are then still inconsistent:
        the scheduler cannot be trusted with another step.
        """
        try:
            run(*args)
        except Exception as error:
            log.exception("a batch of %d requests failed; they end with an error", len(reqs))
            waiting = {id(r) for r in self.waiting}  # retracted back to the queue: unharmed
            for req in reqs:
                if req.state is not ReqState.FINISHED and id(req) not in waiting:
                    self._fail(req, error, outputs)
            try:
                self.check_integrity()
            except Exception as e:
                raise SchedulerBroken(f"after a failed batch: {e}") from error

    def _fail(self, req: Req, error: BaseException, outputs: list[StepOutput]) -> None:
        req.finish_reason = None  # it may have finished in the failed step, unreported
        req.finish(FinishReason.internal_error(error))
        self.kv.discard(req)
        self.finisher.finish_text(req)  # close its text stream
        req.draft_ids = []
        req.state = ReqState.FINISHED
        if req in self.running:
            self.running.remove(req)
        if req is self.chunked:
            self.chunked = None
        outputs.append(StepOutput(req, [], "", True))

    def _ready_waiting(self, outputs: list[StepOutput]) -> list[Req]:
        """Waiting requests that may be admitted (grammar compiled); failed compiles end here."""
        ready = [r for r in self.waiting if self.constraints.poll(r)]
        failed = [r for r in ready if r.finished]
        for req in failed:
            self.waiting.remove(req)
            req.state = ReqState.FINISHED
            outputs.append(StepOutput(req, [], self.finisher.finish_text(req), True))
        return [r for r in ready if not r.finished] if failed else ready

    def _run_prefill(self, batch: PrefillBatch, outputs: list[StepOutput]) -> None:
        admitted = {id(r) for r in batch.reqs}
        self.waiting = [r for r in self.waiting if id(r) not in admitted]
        items = []
        for req, n in zip(batch.reqs, batch.extend_lens, strict=True):
            if not req.admitted_once:
                req.admitted_once = True
                req.cached_tokens = req.cache_protected_len
                self.stats.prompt_tokens += len(req.input_ids)
                self.stats.cached_tokens += req.cached_tokens
                self.usage.admitted(req.extra_key, req.last_node, len(req.input_ids),
                                    req.cached_tokens, getattr(self.kv.cache, "clock", 0))
            req.state = ReqState.RUNNING
            start = req.kv_len - n
            items.append(
                ForwardItem(req.fill_ids[start : req.kv_len], req.kv_slots, start, req.logit_from())
            )
        self.stats.prefill_tokens += sum(batch.extend_lens)
        out = self.runner.forward(items)
        for i, req in enumerate(batch.reqs):
            if req.logit_from() is not None:
                record_input_logprobs(req, items[i], out.last[i], out.extra[i])
        self.chunked = batch.chunked
        done = [i for i, r in enumerate(batch.reqs) if r is not batch.chunked]
        to_sample = [i for i in done if batch.reqs[i].remaining_new_tokens() > 0]
        new_ids = self._sample([batch.reqs[i] for i in to_sample], out.last[to_sample])
        for i in done:
            req = batch.reqs[i]
            if i not in to_sample:  # max_new_tokens == 0: prefill only
                req.finish(FinishReason("length", length=0))
                self._retire(req, [], "", outputs)
                continue
            self._append(req, new_ids[to_sample.index(i)], outputs)
        for req in batch.reqs:
            if not req.finished:
                self.kv.cache_unfinished(req)
                if req is not batch.chunked:
                    self.running.append(req)
                    plan_draft(req, self.constraints.draft_tokenizer, self.capacity)

    def _run_decode(self, outputs: list[StepOutput]) -> None:
        if not self._reserve_decode_slots():
            return
        reqs = list(self.running)
        items = []
        for r in reqs:
            start = r.kv_len - 1 - len(r.draft_ids)  # position of the last token
            frm = start if r.draft_ids else None  # drafts need logits at every position
            items.append(ForwardItem([r.last_token, *r.draft_ids], r.kv_slots, start, frm))
        out = self.runner.forward(items)
        self.stats.decode_steps += 1
        if any(r.draft_ids for r in reqs):
            got, accepted = verify_drafts(
                reqs, out.last, out.extra, self.kv, self._sample, self._append
            )
            outputs.extend(got)
            self.stats.jump_forward_tokens += accepted
        else:
            new_ids = self._sample(reqs, out.last)
            for req, token in zip(reqs, new_ids, strict=True):
                self._append(req, token, outputs)
        self.running = [r for r in self.running if not r.finished]
        for req in self.running:
            plan_draft(req, self.constraints.draft_tokenizer, self.capacity)
        cfg = self.config
        self.new_token_ratio = max(
            cfg.min_new_token_ratio, self.new_token_ratio - cfg.new_token_ratio_decay
        )

    def _reserve_decode_slots(self) -> bool:
        """Give every running request one slot for this step (more for a draft).

        Drafts are dropped before any request is retracted to make room.
        """
        while self.running:
            sizes = [1 + len(r.draft_ids) for r in self.running]
            if self.kv.reserve_decode(self.running, sizes):
                return True
            if sum(sizes) > len(sizes):
                for req in self.running:
                    req.draft_ids = []
                continue
            if len(self.running) == 1 and self.chunked is None:
                raise RuntimeError("the KV pool cannot hold a single request's next token")
            self._retract_one()
        return False

    def _retract_one(self) -> None:
        """Free the running request with the fewest generated tokens and requeue it first.

        A running chunked prefill is retracted first when it is the only one left.
        """
        if not self.running:
            victim = self.chunked
            self.chunked = None
        else:
            victim = min(reversed(self.running), key=lambda r: len(r.output_ids))
            self.running.remove(victim)
        assert victim is not None
        self.kv.release(victim)  # its K/V stay in the tree (evictable) for the retry
        victim.state = ReqState.WAITING
        victim.draft_ids = []
        victim.retractions += 1
        self.stats.retractions += 1
        self.waiting.insert(0, victim)
        cfg = self.config
        self.new_token_ratio = min(1.0, max(self.new_token_ratio, cfg.init_new_token_ratio) + 0.1)
        log.debug("retracted %s after %d tokens", victim.rid, len(victim.output_ids))

    # -- sampling and finishing ------------------------------------------------------

    def _sample(self, reqs: list[Req], logits: torch.Tensor) -> list[int]:
        if not reqs:
            return []
        self.constraints.mask(logits, reqs)
        batch = SamplingBatch.build(
            [r.params for r in reqs], logits.device, logits.shape[-1], self.finisher.eos_token_ids
        )
        want_lp = any(r.return_logprob for r in reqs)
        res = sample(
            logits,
            batch,
            [r.output_ids for r in reqs],
            [r.input_ids for r in reqs] if batch.need_penalties else None,
            return_logprobs=want_lp,
            top_logprobs_num=[r.top_logprobs_num if r.return_logprob else 0 for r in reqs],
        )
        ids = res.next_token_ids.tolist()
        if want_lp:
            record_output_logprobs(reqs, ids, res)
        return ids

    def _append(self, req: Req, token: int, outputs: list[StepOutput]) -> None:
        req.output_ids.append(token)
        if req.first_token_at is None:
            req.first_token_at = time.perf_counter()
        self.stats.generated_tokens += 1
        text = self.finisher.check(req, token)
        self.constraints.accept(req, token)
        if req.finished:
            self._retire(req, [token], text, outputs)
        else:
            outputs.append(StepOutput(req, [token], text, False))

    def _retire(
        self, req: Req, new_ids: list[int], text: str, outputs: list[StepOutput] | None = None
    ) -> None:
        """A request ended: release its K/V (caching them) and report it."""
        self.kv.release(req)
        req.state = ReqState.FINISHED
        if req in self.running:
            self.running.remove(req)
        if req is self.chunked:
            self.chunked = None
        text += self.finisher.finish_text(req)
        out = StepOutput(req, new_ids, text, True)
        (outputs if outputs is not None else self._pending).append(out)

    # -- maintenance ---------------------------------------------------------------

    def flush_cache(self) -> bool:
        """Drop every cached prefix; only when no request is queued or running."""
        if self.has_work():
            return False
        self.kv.cache.reset()
        return True

    def stats_snapshot(self) -> dict[str, Any]:
        """Cache hit rate (in prompt tokens), token counts, KV usage, running and waiting counts."""
        return snapshot(self.stats, self.kv, len(self.admitted()), len(self.waiting))

    def check_integrity(self) -> None:
        """Raise IntegrityError unless free + cached + held by running requests == total."""
        self.kv.cache.check_integrity(self.kv.owned_slots(self.admitted()))
        if self.kv.pool.ledger is not None:  # debug: every cached slot holds its token's K/V
            wrong = self.runner.slot_mismatches(self.kv.cache.slot_contents())
            if wrong:  # under tensor parallelism, counted over every rank's shard
                raise IntegrityError(f"{wrong} cached slots hold K/V written for another token")


class SchedulerBroken(RuntimeError):
    """The KV pool and prefix tree are inconsistent: no further step is safe."""
