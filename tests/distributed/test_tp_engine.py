"""A TP=2 engine (two gloo ranks on 127.0.0.1) against TP=1: identical greedy tokens in
float32 with the radix cache on and off, and the KV integrity of both ranks after
aborts and retraction (rank 0's slot accounting; every rank's slot contents)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import radixlm
from radixlm.config import build_engine_config
from radixlm.distributed import init_tp_group
from radixlm.distributed.plan import exit_now, leave_group, send_stop
from radixlm.distributed.worker import run_worker
from radixlm.loader import load_model
from tests.helpers.engine_checks import assert_clean
from tests.helpers.tiny_models import write_tiny_model

GREEDY = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
PREFIX = list(range(10, 40))
PROMPTS = [[*PREFIX, 50 + i, 60 + i] for i in range(3)] + [list(range(70, 80))]


def _options(model: str, case: str) -> dict:
    return dict(model=model, dtype="float32", device="cpu", quantization="none",
                max_total_tokens=200 if case == "pressure" else 1024, debug=True,
                disable_radix_cache=case == "no-cache")  # fmt: skip


def _scenario(eng, case: str) -> dict:
    """Two rounds of the prompts (the second hits the cache), then an abort mid-stream;
    "pressure": four long requests in a 200-token pool (retraction), then the abort."""
    if case == "pressure":
        sp = {"temperature": 0, "max_new_tokens": 40, "ignore_eos": True}
        ids = [list(range(10 + 7 * i, 40 + 7 * i)) for i in range(4)]
        first = [r["output_ids"] for r in eng.generate(input_ids=ids, sampling_params=sp)]
        assert eng.scheduler.stats.retractions >= 1
        return {"first": first, **_abort(eng)}
    first = [r["output_ids"] for r in eng.generate(input_ids=PROMPTS, sampling_params=GREEDY)]
    second = [r["output_ids"] for r in eng.generate(input_ids=PROMPTS, sampling_params=GREEDY)]
    return {"first": first, "second": second, **_abort(eng)}


def _abort(eng) -> dict:
    """Abort a stream after two chunks, then generate again; the pool ends clean."""
    long = {"temperature": 0, "max_new_tokens": 60, "ignore_eos": True}
    stream = eng.generate_stream(input_ids=[*PREFIX, 90], sampling_params=long, rid="a")
    for i, chunk in enumerate(stream):
        if i == 2:
            eng.abort("a")
        if chunk["finished"]:
            reason = chunk["meta_info"]["finish_reason"]["type"]
            break
    after = eng.generate(input_ids=PROMPTS[0], sampling_params=GREEDY)["output_ids"]
    assert_clean(eng)
    return {"abort": reason, "after": after}


def _rank(rank: int, port: int, model: str, case: str, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    tp = init_tp_group(rank, 2, f"tcp://127.0.0.1:{port}")
    options = _options(model, case)
    if rank > 0:
        done = run_worker(build_engine_config(**options), tp)
        leave_group()
        Path(f"{out}.{rank}").write_text(json.dumps(dataclasses.asdict(done)))
        exit_now(0)
    loaded = load_model(build_engine_config(**options).load, progress=False, tp=tp)
    options.pop("model")
    eng = radixlm.Engine(loaded=loaded, **options)
    try:
        result = _scenario(eng, case)
        result["forwards"] = eng.scheduler.runner.forwards
    except BaseException as e:  # the parent reports it (a spawned rank's traceback is lost)
        result = {"error": f"{type(e).__name__}: {e}"}
    finally:
        eng.shutdown()
        send_stop()
    Path(f"{out}.0").write_text(json.dumps(result))
    exit_now(0)


@pytest.mark.parametrize("case", ["cache", "no-cache", "pressure"])
def test_tp2_engine_matches_tp1(tmp_path: Path, case: str):
    torch.set_num_threads(1)
    model = str(write_tiny_model(tmp_path / "m", "llama"))
    with radixlm.Engine(**_options(model, case)) as eng:
        expected = _scenario(eng, case)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "out")
    mp.start_processes(_rank, args=(port, model, case, out), nprocs=2, start_method="spawn")
    got = json.loads(Path(f"{out}.0").read_text())
    assert "error" not in got, got["error"]
    forwards = got.pop("forwards")
    assert got == expected
    assert got["abort"] == "abort"
    # rank 1 ran every forward rank 0 planned, no more, no fewer, and rank 0's integrity
    # checks found rank 1's shard of every cached slot written for the tree's token
    rank1 = json.loads(Path(f"{out}.1").read_text())
    assert rank1["forwards"] == forwards > 3
    assert rank1["wrong"] == 0
    assert rank1["slots_checked"] >= (len(PREFIX) if case != "no-cache" else 0)
