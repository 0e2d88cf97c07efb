"""A real server on --cache-dir: stop it, start it again, and the cache is still there."""

from __future__ import annotations

import random
import sys
import time

import httpx
import pytest
from e2e.server_process import free_port, idle_info, read_log, start_server, stop_server

GREEDY = {"max_new_tokens": 8, "temperature": 0.0, "ignore_eos": True}
PROMPT = [random.Random(7).randrange(3, 380) for _ in range(150)]  # 3 entries of 64 tokens


def start(model, cache_dir):
    port = free_port()
    cmd = [sys.executable, "-m", "radixlm.launch_server", "--log-level", "warning",
           "--dtype", "float32", "--model", str(model), "--port", str(port),
           "--max-total-tokens", "4096", "--cache-dir", str(cache_dir)]  # fmt: skip
    return start_server(cmd, port), f"http://127.0.0.1:{port}"


def generate(url, ids, salt=None):
    body = {"input_ids": ids, "sampling_params": GREEDY}
    if salt is not None:
        body["cache_salt"] = salt
    r = httpx.post(f"{url}/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["output_ids"], r.json()["meta_info"]["cached_tokens"]


def stop(proc, url):
    """Check the KV pool once idle, stop the server, return its log."""
    time.sleep(0.5)  # the engine checks KV integrity once idle
    assert idle_info(url)["integrity_error"] is None
    assert stop_server(proc) in (0, 143)
    return read_log(proc)


def entry_files(cache_dir):
    return sorted((cache_dir / "entries").glob("*.kv"))


def wait_for_files(cache_dir, n, timeout=30.0):
    deadline = time.monotonic() + timeout
    while len(entry_files(cache_dir)) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    return entry_files(cache_dir)


@pytest.fixture(scope="module")
def warmed(tiny_model_factory, tmp_path_factory):
    """(model, cache dir, the uncached greedy tokens of PROMPT) after one server ran it."""
    model, cache_dir = tiny_model_factory("llama"), tmp_path_factory.mktemp("kvcache")
    proc, url = start(model, cache_dir)
    try:
        tokens, cached = generate(url, PROMPT)  # the first run: nothing to reuse
        assert cached == 0
        assert len(wait_for_files(cache_dir, 3)) >= 3  # [0,64) [64,128) and the tail
    finally:
        stop(proc, url)
    return model, cache_dir, tokens


def test_a_restarted_server_hits_on_its_first_repeated_request(warmed):
    model, cache_dir, uncached = warmed
    proc, url = start(model, cache_dir)
    try:
        assert generate(url, PROMPT) == (uncached, 149)  # all but the token it must compute
        assert generate(url, PROMPT, salt="someone-else") == (uncached, 0)
    finally:
        stop(proc, url)


def test_another_model_does_not_use_the_directory(warmed, tiny_model_factory):
    _, cache_dir, _ = warmed
    other = tiny_model_factory("smollm2")  # the same tokenizer and shapes, other weights
    before = {f.name for f in entry_files(cache_dir)}
    proc, url = start(other, cache_dir)
    try:
        _, cached = generate(url, PROMPT)
        assert cached == 0
    finally:
        log = stop(proc, url)
    assert f"cache dir {cache_dir} is not used" in log
    assert before <= {f.name for f in entry_files(cache_dir)}  # nothing of it was deleted


def test_a_truncated_file_is_skipped_and_answers_stay_exact(warmed):
    model, cache_dir, uncached = warmed
    files = entry_files(cache_dir)
    middle = next(f for f in files if b'"start":64,' in f.read_bytes())
    middle.write_bytes(middle.read_bytes()[:-100])  # a write cut short
    proc, url = start(model, cache_dir)
    try:
        tokens, cached = generate(url, PROMPT)
        assert tokens == uncached
        assert cached == 64  # the chain stops at the damaged block
    finally:
        log = stop(proc, url)
    assert f"skipping entry {middle.name}" in log and "truncated" in log
