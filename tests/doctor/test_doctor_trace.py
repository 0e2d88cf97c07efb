"""The request trace: what a line holds, hash mode, rotation, reading back, and the engine hook."""

from __future__ import annotations

import json

import pytest

from radixlm.config import SchedulerConfig, TraceConfig
from radixlm.sampling.params import SamplingParams
from radixlm.scheduler.request import FinishReason, Req
from radixlm.trace.reader import read_trace
from radixlm.trace.record import page_hashes, tenant_label
from radixlm.trace.writer import TraceWriter, header_for, trace_files


def header(hashed: bool = False, page: int = 4):
    return header_for("m", 1000, 512, SchedulerConfig(), hashed, page)


def finished_req(rid: str, ids: list[int], salt: str | None = None, cached: int = 0) -> Req:
    req = Req(rid=rid, input_ids=ids, params=SamplingParams(max_new_tokens=5), extra_key=salt)
    req.output_ids = [7, 8]
    req.cached_tokens, req.admitted_once = cached, True
    req.finish(FinishReason("length", length=2))
    return req


def test_a_line_holds_the_request_and_only_a_hash_of_its_salt(tmp_path):
    w = TraceWriter(tmp_path, header())
    w.arrived("a", 3)
    w.finished([finished_req("a", [5, 6, 7, 8, 9], salt="s3cret-salt", cached=4)])
    text = trace_files(tmp_path)[0].read_text()
    assert "s3cret-salt" not in text
    line = json.loads(text.splitlines()[1])
    assert line["tenant"] == tenant_label("s3cret-salt") and line["tenant"].startswith("salt:")
    assert (line["prompt"], line["output"], line["cached"], line["step"]) == (
        [5, 6, 7, 8, 9], [7, 8], 4, 3)
    assert (line["output_len"], line["max_new_tokens"], line["finish"]) == (2, 5, "length")


def test_hash_mode_stores_page_hashes_and_no_token_ids(tmp_path):
    w = TraceWriter(tmp_path, header(hashed=True, page=4))
    ids = [11, 12, 13, 14, 11, 12, 13, 14, 99]
    w.finished([finished_req("a", ids), finished_req("b", [*ids[:4], 1, 2, 3, 4])])
    recs = read_trace(tmp_path).records
    raw = trace_files(tmp_path)[0].read_text()
    assert '"prompt"' not in raw and '"output"' not in raw
    assert [f"{p:016x}" for p in recs[0].pages] != []  # two full pages, the tail dropped
    assert len(recs[0].pages) == 2 and recs[0].pages[0] == recs[0].pages[1] == recs[1].pages[0]
    assert recs[1].pages[1] != recs[0].pages[1]
    assert page_hashes(ids, 4)[0] == page_hashes(ids[4:], 4)[0]  # a page's hash is its tokens'


def test_files_rotate_by_size_and_the_oldest_go(tmp_path):
    w = TraceWriter(tmp_path, header(), max_bytes=2048, max_files=3)
    for i in range(60):
        w.arrived(str(i), i)
        w.finished([finished_req(str(i), list(range(10)))])
    files = trace_files(tmp_path)
    assert len(files) == 3 and all(f.stat().st_size <= 2048 for f in files)
    assert all(json.loads(f.read_text().splitlines()[0]).get("header") for f in files)
    recs = read_trace(tmp_path).records
    assert 5 < len(recs) < 60 and [r.step for r in recs] == list(range(60 - len(recs), 60))
    assert [r.step for r in read_trace(tmp_path, limit=5).records] == list(range(55, 60))


def test_a_cut_line_is_skipped_and_runs_follow_each_other(tmp_path):
    for _run in range(2):
        w = TraceWriter(tmp_path, header())
        for i in range(3):
            w.arrived(str(i), i)
            w.finished([finished_req(str(i), [1, 2, 3])])
        w.close()
    with trace_files(tmp_path)[-1].open("a") as f:
        f.write('{"t": 1.0, "prompt_len": 3, "pro')  # a crash mid-line
    trace = read_trace(tmp_path)
    assert trace.bad_lines == 1 and len(trace.records) == 6
    steps = [r.step for r in trace.records]
    assert steps == sorted(steps) and len(set(steps)) == 6  # the second run comes after


def test_a_line_with_ids_that_are_not_64_bit_ints_is_skipped(tmp_path):
    w = TraceWriter(tmp_path, header())
    w.finished([finished_req("a", [1, 2, 3])])
    w.close()
    good = trace_files(tmp_path)[0].read_text().splitlines()[1]
    with trace_files(tmp_path)[0].open("a") as f:
        for bad in ([1, 2.5, 3], [1, "2", 3], [1, 2**64, 3], "123"):
            f.write(good.replace('"prompt":[1,2,3]', '"prompt":' + json.dumps(bad)) + "\n")
    trace = read_trace(tmp_path)
    assert trace.bad_lines == 4 and [r.prompt for r in trace.records] == [[1, 2, 3]]


def test_a_failing_write_turns_the_trace_off_without_raising(tmp_path, monkeypatch):
    w = TraceWriter(tmp_path, header())

    def broken(record):
        raise OSError("disk full")

    monkeypatch.setattr(w, "_write", broken)
    w.finished([finished_req("a", [1, 2])])
    assert not w.enabled
    w.finished([finished_req("b", [1, 2])])  # still quiet


def test_bad_trace_settings_name_the_field():
    with pytest.raises(ValueError, match="trace_page_size"):
        TraceConfig(trace_page_size=0)
    with pytest.raises(ValueError, match="trace_max_files"):
        TraceConfig(trace_max_files=0)


def test_the_engine_writes_one_line_per_finished_request(tiny_model_factory, tmp_path):
    from radixlm import Engine

    eng = Engine(model=str(tiny_model_factory("llama")), dtype="float32",
                 max_total_tokens=2048, trace_dir=str(tmp_path))  # fmt: skip
    try:
        prompts = [[1, 5, 6, 7, 8, 9, 10, 11, 12, 13 + i] for i in range(6)]
        outs = eng.generate(input_ids=prompts, sampling_params={"max_new_tokens": 3,
                            "temperature": 0, "ignore_eos": True}, cache_salt="t1")  # fmt: skip
        outs += eng.generate(input_ids=prompts[:2], sampling_params={"max_new_tokens": 3,
                             "temperature": 0, "ignore_eos": True})  # fmt: skip
    finally:
        eng.shutdown()
    trace = read_trace(tmp_path)
    assert trace.header.max_total_tokens == 2048 and trace.header.context_length == 512
    recs = trace.records
    assert len(recs) == 8
    by_prompt = sorted((tuple(r.prompt), r.tenant, r.cached) for r in recs)
    want = sorted((tuple(p), tenant_label("t1" if i < 6 else None), o["meta_info"]["cached_tokens"])
                  for i, (p, o) in enumerate(zip(prompts + prompts[:2], outs, strict=True)))
    assert by_prompt == want
    assert all(r.output_len == 3 and len(r.output) == 3 and r.finish == "length" for r in recs)
    assert recs[-1].step > recs[0].step  # the second call arrived after the first ran
