"""A step whose forward raises ends its batch's requests with an error, and only those.

The failed requests' own slots go back to the pool and nothing they computed is
cached; requests outside the batch, queued or decoding, finish as if nothing
happened; the next request gets the same tokens as before the failure. A
failure that leaves the pool inconsistent stops the engine instead, failing
every caller.
"""

from __future__ import annotations

import threading
import time
import types

import pytest
from helpers.engine_checks import assert_clean
from helpers.faults import POISON, InjectedFault, poisoned

from radixlm.engine.engine import EngineError
from radixlm.executor.model_runner import ModelRunner

GREEDY = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}
PREFIX = list(range(20, 60))  # cached by the first request, shared by the later ones


def patch_forward(engine, make):
    """Replace the engine's `runner.forward` by `make(ModelRunner.forward)`."""
    runner = engine.scheduler.runner
    runner.forward = types.MethodType(make(ModelRunner.forward), runner)


def timed_failure(engine, ids, params=GREEDY) -> float:
    """Seconds until generating `ids` raised EngineError naming the injected fault."""
    start = time.monotonic()
    with pytest.raises(EngineError, match="internal error: InjectedFault"):
        engine.generate(input_ids=ids, sampling_params=params)
    return time.monotonic() - start


def test_a_failed_prefill_ends_its_requests_and_the_engine_goes_on(engine_factory):
    eng = engine_factory("llama")
    long = {**GREEDY, "max_new_tokens": 150}
    want_long = eng.generate(input_ids=[5, 6, 8, 9], sampling_params=long)["output_ids"]
    want = eng.generate(input_ids=[*PREFIX, 90, 91], sampling_params=GREEDY)["output_ids"]
    near = PREFIX + POISON[:2] + [91]  # what the failed request would have cached
    want_near = eng.generate(input_ids=near, sampling_params=GREEDY)["output_ids"]
    eng.flush_cache()
    eng.generate(input_ids=[*PREFIX, 90, 91], sampling_params=GREEDY)
    patch_forward(eng, poisoned)

    stream = eng.generate_stream(input_ids=[5, 6, 8, 9], sampling_params=long)
    first = next(stream)  # decoding now
    # Over the cached prefix (locked, then unlocked) and from scratch; both fail fast.
    assert timed_failure(eng, PREFIX + POISON + [90]) < 1.0
    assert timed_failure(eng, [*POISON, 30, 31]) < 1.0
    got_long = first["output_ids"] + [t for c in stream for t in c["output_ids"]]
    assert got_long == want_long  # the decoding request never noticed

    # The failed forward wrote NaN K/V into its slots: had any been cached, these would differ.
    after = eng.generate(input_ids=near, sampling_params=GREEDY)
    assert after["output_ids"] == want_near
    assert after["meta_info"]["cached_tokens"] == len(PREFIX)
    assert eng.generate(input_ids=[*PREFIX, 90, 91], sampling_params=GREEDY)["output_ids"] == want
    assert_clean(eng)


def test_a_failed_decode_ends_the_running_batch_and_the_queue_goes_on(engine_factory):
    eng = engine_factory("llama", max_running_requests=2)
    long = {**GREEDY, "max_new_tokens": 300}
    prompts = [[11, 12, 13], [14, 15, 16], [17, 18, 19]]
    want = eng.generate(input_ids=prompts[2], sampling_params=GREEDY)["output_ids"]
    failed = []

    def fail_first_decode_of_two(forward):
        def run(self, items):
            if not failed and len(items) == 2 and all(len(it.new_ids) == 1 for it in items):
                failed.append([len(it.slots) for it in items])
                raise InjectedFault("injected fault in a decode step")
            return forward(self, items)

        return run

    patch_forward(eng, fail_first_decode_of_two)
    results: dict[int, object] = {}

    def run(i: int) -> None:
        try:
            params = long if i < 2 else GREEDY
            results[i] = eng.generate(input_ids=prompts[i], sampling_params=params)
        except EngineError as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.05)  # 0 and 1 decode together; 2 waits (at most two running)
    for t in threads:
        t.join(timeout=60)
    assert failed, "the two long requests never decoded together"
    assert all(isinstance(results[i], EngineError) for i in (0, 1))
    assert results[2]["output_ids"] == want
    assert_clean(eng)


def test_a_failure_that_leaks_a_slot_stops_the_engine(engine_factory):
    eng = engine_factory("llama")

    def leak_and_fail(forward):
        def run(self, items):
            self.pool.alloc(1)  # a slot nobody owns: the integrity check cannot pass
            raise InjectedFault("injected fault that leaks")

        return run

    patch_forward(eng, leak_and_fail)
    with pytest.raises(EngineError, match="the engine failed"):
        eng.generate(input_ids=[3, 4, 5], sampling_params=GREEDY)
    eng._thread.join(timeout=10)
    assert not eng._thread.is_alive()
    with pytest.raises(RuntimeError, match="shut down"):
        eng.generate(input_ids=[3, 4, 5], sampling_params=GREEDY)
