"""The offline Engine: load a model, run the scheduler loop in a thread, answer requests.

    engine = radixlm.Engine(model="smollm2-135m-instruct")
    out = engine.generate("The capital of France is", {"max_new_tokens": 8, "temperature": 0})
    for chunk in engine.generate_stream("Tell me a story", {"max_new_tokens": 64}):
        print(chunk["text_delta"], end="")

The scheduler is touched only by the loop thread; callers talk to it through
an inbox of commands and receive events on per-request queues.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from typing import Any

from radixlm.engine.config import EngineConfig, build_engine_config
from radixlm.engine.output import Prompt, RequestHandle, expand_requests
from radixlm.engine.setup import build_runtime
from radixlm.loader import LoadedModel
from radixlm.sampling.params import SamplingParams
from radixlm.scheduler.scheduler import StepOutput
from radixlm.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """The engine failed while running a request (its batch's step raised)."""


class Engine:
    """An in-process serving engine; see the module docstring.

    Keyword options are those of `EngineConfig` (model, dtype, device,
    max_total_tokens, mem_fraction, disable_radix_cache, schedule_policy,
    chunked_prefill_size, max_prefill_tokens, max_running_requests, ...).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        loaded: LoadedModel | None = None,
        tokenizer: Tokenizer | None = None,
        **options: Any,
    ) -> None:
        """`loaded` / `tokenizer` reuse an already loaded model (e.g. two engines, one model)."""
        if model is not None:
            options["model"] = model
        elif loaded is not None:
            options["model"] = str(loaded.path)
        self.config: EngineConfig = build_engine_config(**options)
        rt = build_runtime(self.config, loaded, tokenizer)
        self.loaded, self.tokenizer, self.scheduler = rt.loaded, rt.tokenizer, rt.scheduler
        self._inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._handles: dict[str, RequestHandle] = {}
        self._wake = threading.Event()
        self._stopped = False
        self.integrity_error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="radixlm-engine", daemon=True)
        self._thread.start()
        atexit.register(self.shutdown)

    # -- public API -----------------------------------------------------------------

    def generate(
        self,
        prompt: Prompt = None,
        sampling_params: dict[str, Any] | SamplingParams | None = None,
        *,
        input_ids: list[int] | list[list[int]] | None = None,
        **request_options: Any,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Run to completion. A single prompt returns one result dict; a list returns a list.

        Each result is `{"text", "output_ids", "meta_info"}` (SGLang's shape);
        with n > 1 each prompt expands to n consecutive results.
        `request_options`: rid, return_logprob, logprob_start_len,
        top_logprobs_num, return_text_in_logprobs, cache_salt.
        """
        handles, single = self._submit(prompt, input_ids, sampling_params, request_options)
        results = [h.wait() for h in handles]
        return results[0] if single and len(results) == 1 else results

    def generate_stream(
        self,
        prompt: Prompt = None,
        sampling_params: dict[str, Any] | SamplingParams | None = None,
        *,
        input_ids: list[int] | None = None,
        **request_options: Any,
    ) -> Iterator[dict[str, Any]]:
        """Yield chunks of one request as they are produced (n must be 1).

        Each chunk: `text_delta`, `text` (cumulative), `output_ids` (new ones),
        `finished`, and `meta_info` (cumulative counts; finish_reason at the end).
        """
        handles, _ = self._submit(prompt, input_ids, sampling_params, request_options)
        if len(handles) != 1:
            for h in handles:
                self.abort(h.rid)
            raise ValueError("streaming takes one prompt with n = 1")
        handle = handles[0]
        try:
            yield from handle.chunks()
        finally:
            if not handle.done:
                self.abort(handle.rid)

    async def async_generate_stream(
        self, prompt: Prompt = None, sampling_params: Any = None, **kw: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """`generate_stream` for asyncio: the waiting happens in a worker thread."""
        import asyncio

        it = self.generate_stream(prompt, sampling_params, **kw)
        sentinel = object()
        while True:
            chunk = await asyncio.to_thread(next, it, sentinel)
            if chunk is sentinel:
                return
            yield chunk

    async def async_generate(self, prompt: Prompt = None, sampling_params: Any = None, **kw: Any):
        """`generate` for asyncio."""
        import asyncio

        return await asyncio.to_thread(self.generate, prompt, sampling_params, **kw)

    def abort(self, rid: str) -> None:
        """Abort request `rid` (queued or running); its result says finish_reason abort."""
        self._call(lambda: self.scheduler.abort(rid), wait=False)

    def flush_cache(self) -> bool:
        """Drop every cached prefix; False (and nothing done) while requests are in flight."""
        return self._call(self.scheduler.flush_cache)

    def check_integrity(self) -> None:
        """Raise unless free + cached + held by running requests == total KV slots."""
        self._call(self.scheduler.check_integrity)

    def get_stats(self) -> dict[str, Any]:
        """Cache hit rate (in prompt tokens), token usage, running and waiting counts."""

        return self._call(self.scheduler.stats_snapshot)

    def shutdown(self) -> None:
        """Stop the loop thread; requests still in flight are aborted."""
        if self._stopped:
            return
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=30)
        atexit.unregister(self.shutdown)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- plumbing -------------------------------------------------------------------

    def _submit(self, prompt, input_ids, sampling_params, options):
        if self._stopped:
            raise RuntimeError("the engine is shut down")
        reqs, single = expand_requests(
            self.tokenizer, prompt, input_ids, sampling_params, options, self.loaded.config
        )
        handles = [RequestHandle(r, self.tokenizer, options) for r in reqs]

        def add() -> None:
            for h in handles:
                try:
                    self.scheduler.add_request(h.req)
                except ValueError as e:
                    h.fail(e)
                    continue
                self._handles[h.rid] = h

        self._call(add)
        for h in handles:
            h.raise_if_failed()
        return handles, single

    def _call(self, fn: Callable[[], Any], wait: bool = True) -> Any:
        """Run `fn` on the loop thread (between steps); return its result when `wait`."""
        fut: Future = Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as e:  # handed to the caller
                fut.set_exception(e)

        self._inbox.put(run)
        self._wake.set()
        return fut.result() if wait else None

    def _loop(self) -> None:
        sched = self.scheduler
        idle_checked = True
        while not self._stopped:
            while not self._inbox.empty():
                self._inbox.get()()
            if not sched.has_work():
                if not idle_checked:
                    self._idle_check()
                    idle_checked = True
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            idle_checked = False
            try:
                outputs = sched.step()
            except Exception as e:  # the scheduler cannot be trusted: fail everything, stop
                log.exception("the scheduler failed beyond repair; the engine stops")
                self._stopped = True
                self._fail_all(EngineError(f"internal error: the engine failed ({e})"))
                break
            self._deliver(outputs)
        self._fail_all(RuntimeError("the engine shut down"))

    def _deliver(self, outputs: list[StepOutput]) -> None:
        for out in outputs:
            handle = self._handles.get(out.req.rid)
            if handle is None:
                continue
            reason = out.req.finish_reason
            if out.finished and reason is not None and reason.is_error:
                handle.fail(EngineError(reason.message or "internal error"))
            else:
                handle.push(out)
            if out.finished:
                del self._handles[out.req.rid]

    def _idle_check(self) -> None:
        try:
            self.scheduler.check_integrity()
        except Exception as e:
            self.integrity_error = e
            log.error("KV integrity check failed: %s", e)

    def _fail_all(self, error: BaseException) -> None:
        for h in list(self._handles.values()):
            h.fail(error)
        self._handles.clear()
