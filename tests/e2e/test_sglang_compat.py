"""SGLang's own frontend (`sgl.RuntimeEndpoint`) runs unchanged against a live radixlm server.

The programs live in `sglang_programs.py` and run once, in a subprocess (importing
`sglang` patches `transformers`), against a server of this module's own on the tiny
model; each test checks one program's results. Skipped when `sglang` is not
installed (`make install` installs it without its dependencies).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from e2e.server_process import fault_env, free_port, read_log, start_server, stop_server

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sglang") is None,
    reason="sglang is not installed: pip install --no-deps sglang==0.5.23 (see the Makefile)",
)

PROGRAMS = Path(__file__).with_name("sglang_programs.py")
FEW_SHOT = "Q: What is 2+2?\nA: 4\nQ: What is the capital of France?\nA: Paris\n"
COLORS = [" blue", " green", " purple"]


@pytest.fixture(scope="module")
def sgl_server(tiny_model_factory):
    """A server of its own (the shared one times queued requests out after 1 s).

    Every step takes 10 ms longer. SGLang's frontend keeps only the latest chunk's
    meta_info while its reader catches up, so a reader slower than two chunks (the
    tiny model decodes a token a millisecond) sees text and logprobs that disagree;
    its own stream-logprobs program would then fail for the client's race, not ours.
    """
    port = free_port()
    model = str(tiny_model_factory("llama"))
    cmd = [sys.executable, "-m", "radixlm.launch_server", "--log-level", "warning",
           "--dtype", "float32",
           "--model", model, "--port", str(port), "--max-total-tokens", "4096"]  # fmt: skip
    proc = start_server(cmd, port, env=fault_env(step_delay=0.01))
    yield f"http://127.0.0.1:{port}", model
    assert stop_server(proc, signal.SIGTERM) in (0, 128 + signal.SIGTERM), read_log(proc)


@pytest.fixture(scope="module")
def results(sgl_server):
    """name -> what each SGLang program produced (see sglang_programs.py)."""
    url, _ = sgl_server
    done = subprocess.run([sys.executable, str(PROGRAMS), url],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def ok(results: dict, name: str) -> dict:
    out = results[name]
    assert "error" not in out, out.get("trace", out["error"])
    return out


def regex_ok(results: dict, name: str) -> dict:
    """A regex program's result; skips while the server has no constrained decoding."""
    out = results[name]
    if "error" in out and "not supported" in out["error"]:
        pytest.skip(f"the server refuses regex: {out['error']}")
    return ok(results, name)


def check_meta(meta: dict, max_tokens: int) -> None:
    assert set(meta) >= {"id", "finish_reason", "prompt_tokens", "completion_tokens",
                         "cached_tokens", "e2e_latency"}  # fmt: skip
    assert 0 < meta["completion_tokens"] <= max_tokens
    assert 0 <= meta["cached_tokens"] < meta["prompt_tokens"]
    assert meta["finish_reason"]["type"] in ("stop", "length")


def test_runtime_endpoint_reads_model_info(results, sgl_server):
    _, model = sgl_server
    info = results["model_info"]
    assert info["model_path"] == model and info["is_generation"] is True
    assert info["tokenizer_path"] == model  # a directory AutoTokenizer loads (bench_serving)
    assert ok(results, "multi_turn")["template"] == "default"  # picked from model_path


def test_few_shot_with_stop(results):
    out = ok(results, "few_shot")
    assert "\n" not in out["answer"]
    assert out["text"] == FEW_SHOT + "Q: What is 1+1?\nA:" + out["answer"]
    check_meta(out["meta"], 12)
    if out["meta"]["finish_reason"]["type"] == "stop":
        matched = out["meta"]["finish_reason"]["matched"]
        assert matched == "\n" or isinstance(matched, int)  # the stop string, or eos


def test_multi_turn_roles_reuse_the_first_turn(results):
    out = ok(results, "multi_turn")
    roles = [m["role"] for m in out["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert out["text"] == (
        "SYSTEM:You are a terse assistant.\nUSER:Say hello.\n"
        f"ASSISTANT:{out['first']}\nUSER:Now say goodbye.\nASSISTANT:{out['second']}\n"
    )
    first, second = out["metas"]
    check_meta(first, 8)
    check_meta(second, 8)
    assert second["cached_tokens"] >= first["prompt_tokens"] - 1  # the whole first prompt


def test_select_scores_match_the_servers_own_logprobs(results, sgl_server):
    """The chosen color is the best mean logprob, recomputed here from full prompt logprobs."""
    url, _ = sgl_server
    out = ok(results, "select")
    meta = out["meta"]
    scores = meta["normalized_prompt_logprobs"]
    assert out["color"] in COLORS and len(scores) == 3
    assert out["color"] == COLORS[max(range(3), key=scores.__getitem__)]
    assert all(entries[0][0] is None for entries in meta["input_token_logprobs"])
    cut = httpx.post(f"{url}/generate", json={"text": out["prompt"],
                     "sampling_params": {"max_new_tokens": 0}}).json()  # fmt: skip
    start = max(cut["meta_info"]["prompt_tokens"] - 2, 0)
    for color, score in zip(COLORS, scores, strict=True):
        full = httpx.post(f"{url}/generate", json={
            "text": out["prompt"] + color, "sampling_params": {"max_new_tokens": 0},
            "return_logprob": True, "logprob_start_len": 0}).json()  # fmt: skip
        values = [e[0] for e in full["meta_info"]["input_token_logprobs"][start + 1 :]]
        assert math.isclose(sum(values) / len(values), score, rel_tol=1e-3, abs_tol=1e-3)


def test_fork_branches_share_the_committed_prefix(results):
    out = ok(results, "fork")
    assert len(out["idea"]) == 3 and all(isinstance(i, str) for i in out["idea"])
    assert out["text"].endswith("Chosen: " + out["idea"][0])
    assert out["server_cached_delta"] > 0  # the branches reused the prefix the fork cached


def test_run_batch_shares_the_few_shot_prefix(results):
    out = ok(results, "run_batch")
    assert len(out["answers"]) == 4 and all("\n" not in a for a in out["answers"])
    for meta in out["metas"]:
        check_meta(meta, 12)
    cached = [m["cached_tokens"] for m in out["metas"]]
    assert sum(cached) > 0 and sum(cached) == out["server_cached_delta"]
    assert len({m["id"] for m in out["metas"]}) == 4


def test_streaming_text_iter(results):
    out = ok(results, "stream")
    assert len(out["chunks"]) >= 2 and "".join(out["chunks"]) == out["more"]
    assert out["meta"]["completion_tokens"] == 8  # ignore_eos


def test_regex_ipv4(results):
    ip = regex_ok(results, "ip_address")["ip"]
    parts = ip.split(".")
    assert len(parts) == 4 and all(p.isdigit() and 0 <= int(p) <= 255 for p in parts), ip


def test_regex_integer(results):
    assert re.fullmatch(r"[0-9]+", regex_ok(results, "integer")["n"])


def test_regex_json_object(results):
    person = json.loads(regex_ok(results, "person_json")["person"])
    assert isinstance(person["name"], str) and isinstance(person["age"], int)
    assert isinstance(person["score"], float)


def test_sglangs_own_stream_logprobs_program(results):
    # sglang.test.test_programs.test_stream_logprobs, unchanged: each streamed chunk's
    # output_token_logprobs has exactly its new tokens; output_token_logprobs_length and
    # completion_tokens are cumulative and equal.
    assert ok(results, "sglang_stream_logprobs")["passed"]
