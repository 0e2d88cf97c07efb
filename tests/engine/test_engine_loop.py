"""The offline Engine over the one engine loop: consistent stream chunks, queue timeouts."""

from __future__ import annotations

import threading
import time
import types

from helpers.engine_checks import assert_clean
from helpers.faults import slowed

from radixlm.executor.model_runner import ModelRunner


def slow_down(engine, seconds: float) -> None:
    runner = engine.scheduler.runner
    runner.forward = types.MethodType(slowed(ModelRunner.forward, seconds), runner)


def test_a_slow_reader_gets_chunks_that_describe_exactly_their_tokens(engine_factory):
    eng = engine_factory("llama")
    params = {"temperature": 0, "max_new_tokens": 60, "ignore_eos": True}
    others = threading.Thread(
        target=eng.generate,
        kwargs={"input_ids": [[9, 10, 11], [12, 13]], "sampling_params": params},
    )
    stream = eng.generate_stream(input_ids=[5, 6, 8], sampling_params=params,
                                 return_logprob=True, top_logprobs_num=2)  # fmt: skip
    first = next(stream)
    others.start()
    seen = []
    for chunk in [first, *stream]:
        time.sleep(0.01)  # the loop runs several steps ahead meanwhile
        meta = chunk["meta_info"]
        seen += chunk["output_ids"]
        assert [e[1] for e in meta["output_token_logprobs"]] == chunk["output_ids"]
        assert meta["completion_tokens"] == meta["output_token_logprobs_length"] == len(seen)
    others.join(timeout=60)
    assert len(seen) == 60
    assert_clean(eng)


def test_the_offline_engine_times_out_a_request_that_waited_too_long(engine_factory):
    eng = engine_factory("llama", max_running_requests=1, queue_timeout=0.3)
    slow_down(eng, 0.01)
    long = {"temperature": 0, "max_new_tokens": 100, "ignore_eos": True}
    hog = threading.Thread(
        target=eng.generate, kwargs={"input_ids": [5, 6], "sampling_params": long}
    )
    hog.start()
    deadline = time.monotonic() + 10
    while eng.get_stats()["num_running_reqs"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    out = eng.generate(input_ids=[7, 8], sampling_params={"max_new_tokens": 2})
    hog.join(timeout=60)
    reason = out["meta_info"]["finish_reason"]
    assert reason["type"] == "abort" and reason["message"].startswith("queue timeout")
    assert out["meta_info"]["completion_tokens"] == 0
    assert_clean(eng)
