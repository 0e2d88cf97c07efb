"""The offline Engine: load a model, run the scheduler loop in a thread, answer requests.

    engine = radixlm.Engine(model="smollm2-135m-instruct")
    out = engine.generate("The capital of France is", {"max_new_tokens": 8, "temperature": 0})
    for chunk in engine.generate_stream("Tell me a story", {"max_new_tokens": 64}):
        print(chunk["text_delta"], end="")

The engine loop (`engine.loop`) runs in a thread and alone touches the scheduler;
callers put requests, aborts and control calls in its inbox and receive chunks on
per-request handles.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, InvalidStateError
from typing import Any

from radixlm.config import EngineConfig, build_engine_config
from radixlm.engine.loop import EngineLoop
from radixlm.engine.messages import AbortMsg, ControlMsg, ErrorMsg, ReplyMsg
from radixlm.engine.output import EngineError, Prompt, RequestHandle, expand_requests
from radixlm.engine.setup import build_runtime
from radixlm.loader import LoadedModel
from radixlm.sampling.params import SamplingParams
from radixlm.tokenizer import Tokenizer

__all__ = ["Engine", "EngineError"]

log = logging.getLogger(__name__)


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
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._handles: dict[str, RequestHandle] = {}  # rid -> handle, until it finished
        self._calls: dict[int, Future] = {}  # control call id -> its caller's future
        self._cids = itertools.count()
        self._stopped = False
        # The loop thread loads the model too: torch work split over two threads runs the
        # loop's OpenMP kernels about 2x slower (two OpenMP teams on the same cores).
        ready: Future = Future()
        self._thread = threading.Thread(
            target=self._start, args=(loaded, tokenizer, ready), name="radixlm-engine",
            daemon=True,
        )  # fmt: skip
        self._thread.start()
        rt = ready.result()  # re-raises a load error
        self.loaded, self.tokenizer, self.scheduler = rt.loaded, rt.tokenizer, rt.scheduler
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
        try:
            results = [h.wait() for h in handles]
        except BaseException:  # one failed: the others have no reader any more
            for h in handles:
                if not h.done:
                    self.abort(h.rid)
            raise
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
        self._inbox.put(AbortMsg(rid))

    def flush_cache(self) -> bool:
        """Drop every cached prefix; False (and nothing done) while requests are in flight."""
        return self._call("flush_cache")

    def check_integrity(self) -> None:
        """Raise unless free + cached + held by running requests == total KV slots."""
        self._call("check_integrity")

    def get_stats(self) -> dict[str, Any]:
        """Cache hit rate (in prompt tokens), token usage, running and waiting counts."""
        return self._call("get_stats")

    @property
    def integrity_error(self) -> str | None:
        """The last failed idle integrity check, or None."""
        return self.loop.integrity_error

    def shutdown(self) -> None:
        """Stop the loop thread; requests still in flight are aborted."""
        if self._stopped:
            return
        self._stopped = True
        self._inbox.put(ControlMsg(-1, "shutdown"))
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
        msgs, single = expand_requests(
            self.tokenizer, prompt, input_ids, sampling_params, options,
            self.loaded.config.vocab_size,
        )  # fmt: skip
        handles = [RequestHandle(m) for m in msgs]
        for h in handles:  # registered before the loop can answer
            self._handles[h.rid] = h
        for m in msgs:
            self._inbox.put(m)
        if self._stopped:  # the loop stopped meanwhile, perhaps before it saw these handles
            for h in handles:
                h.push(RuntimeError("the engine is shut down"))
        return handles, single

    def _call(self, kind: str) -> Any:
        """Run control call `kind` on the loop thread (between steps); return its result.

        Raises RuntimeError with the loop's message when it failed or the engine stopped.
        """
        if self._stopped:
            raise RuntimeError("the engine is shut down")
        cid = next(self._cids)
        fut: Future = Future()
        self._calls[cid] = fut
        self._inbox.put(ControlMsg(cid, kind))
        if self._stopped:  # as in _submit
            _settle(fut, ReplyMsg(cid, error="the engine is shut down"))
        reply: ReplyMsg = fut.result()
        if reply.error is not None:
            raise RuntimeError(reply.error)
        return reply.result

    def _receive(self, timeout_s: float) -> list[Any]:
        """The loop's inbox: what callers put in, waiting at most `timeout_s` for the first."""
        msgs: list[Any] = []
        try:
            msgs.append(self._inbox.get(timeout=timeout_s or None) if timeout_s else
                        self._inbox.get_nowait())  # fmt: skip
            while True:
                msgs.append(self._inbox.get_nowait())
        except queue.Empty:
            return msgs

    def _deliver(self, msgs: list[Any]) -> None:
        """The loop's outbox (on the loop thread): chunks to handles, replies to callers."""
        for m in msgs:
            if isinstance(m, ReplyMsg):
                fut = self._calls.pop(m.cid, None)
                if fut is not None:
                    _settle(fut, m)
                continue
            handle = self._handles.get(m.rid)
            if handle is None:
                continue
            handle.push(m)
            if isinstance(m, ErrorMsg) or m.finished:
                del self._handles[m.rid]

    def _start(
        self, loaded: LoadedModel | None, tokenizer: Tokenizer | None, ready: Future
    ) -> None:
        """The loop thread: build the runtime, report it (or the error) on `ready`, run."""
        try:
            rt = build_runtime(self.config, loaded, tokenizer)
            self.loop = EngineLoop(rt.scheduler, rt.tokenizer, self._receive, self._deliver,
                                   self.config.queue_timeout, trace=rt.trace)  # fmt: skip
        except BaseException as e:
            self._stopped = True
            ready.set_exception(e)
            return
        ready.set_result(rt)
        self._run()

    def _run(self) -> None:
        try:
            self.loop.run()
        except Exception:  # logged by the loop, which failed every request in flight
            pass
        finally:
            self._stopped = True
            stopped = RuntimeError("the engine is shut down")
            for h in list(self._handles.values()):
                h.push(stopped)
            self._handles.clear()
            for cid in list(self._calls):
                _settle(self._calls.pop(cid), ReplyMsg(cid, error=str(stopped)))


def _settle(fut: Future, reply: ReplyMsg) -> None:
    """Give `fut` its reply unless it already has one (two threads may try)."""
    with contextlib.suppress(InvalidStateError):
        fut.set_result(reply)
