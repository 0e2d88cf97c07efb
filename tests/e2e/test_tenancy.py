"""Tenants on a live server: two tenant keys and an admin key.

Tenant B never gets a cached token from tenant A's prompts (whatever salt it sends),
cannot abort A's requests, and cannot read the global statistics; `--cache-report`
changes what `cached_tokens` says. Steps take 5 ms longer so requests stay in flight.
"""

from __future__ import annotations

import signal
import sys
import threading
import time

import httpx
import pytest
from e2e.server_process import fault_env, free_port, idle_info, start_server, stop_server

ROOT, KA, KB = ({"Authorization": f"Bearer {k}"} for k in ("root", "ka", "kb"))
LONG = {"max_new_tokens": 300, "ignore_eos": True, "temperature": 0}
PROMPT = "the secret PIN of the vault is 4 8 1 5, and the door code is " * 6


def _start(model: str, *flags: str):
    port = free_port()
    cmd = [sys.executable, "-m", "radixlm.launch_server", "--log-level", "warning",
           "--dtype", "float32", "--model", model, "--port", str(port),
           "--max-total-tokens", "4096", *flags]  # fmt: skip
    proc = start_server(cmd, port, env=fault_env(step_delay=0.005))
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def url(tiny_model_factory, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text("ka:alice\nkb:bob\n")
    proc, url = _start(str(tiny_model_factory("llama")), "--api-key", "root",
                       "--api-key-file", str(keys))  # fmt: skip
    yield url
    assert stop_server(proc, signal.SIGTERM) in (0, 128 + signal.SIGTERM)


def _cached(url: str, headers: dict, salt: str | None = None) -> int:
    body = {"text": PROMPT, "sampling_params": {"max_new_tokens": 1}}
    if salt is not None:
        body["cache_salt"] = salt
    res = httpx.post(f"{url}/generate", json=body, headers=headers, timeout=30)
    assert res.status_code == 200, res.text
    return res.json()["meta_info"]["cached_tokens"]


def test_a_tenant_never_hits_on_another_tenants_prompts(url):
    _cached(url, KA)
    assert _cached(url, KA) > 0  # A hits on its own prompt
    assert _cached(url, KB) == 0
    assert _cached(url, ROOT) == 0  # A's namespace is not the shared default one
    _cached(url, KA, salt="s")
    assert _cached(url, KB, salt="s") == 0  # the same client salt, another tenant
    assert _cached(url, KA, salt="s") > 0
    forged = {"text": "x", "cache_salt": "\x00alice\x00"}
    res = httpx.post(f"{url}/generate", headers=KB, json=forged)
    assert res.status_code == 400 and res.json()["error"]["param"] == "cache_salt"


def _background(url: str, headers: dict, rid: str) -> tuple[threading.Thread, dict]:
    out: dict = {}
    body = {"text": "long", "sampling_params": LONG, "rid": rid}
    t = threading.Thread(target=lambda: out.update(
        res=httpx.post(f"{url}/generate", json=body, headers=headers, timeout=60)))  # fmt: skip
    t.start()
    return t, out


def _wait_running(url: str, n: int) -> None:
    deadline = time.monotonic() + 20
    while httpx.get(f"{url}/get_server_info", headers=ROOT).json()["num_running_reqs"] < n:
        assert time.monotonic() < deadline, f"{n} requests did not start"
        time.sleep(0.02)


def test_a_tenant_cannot_abort_another_tenants_requests(url):
    ta, a = _background(url, KA, "a-req")
    tb, b = _background(url, KB, "b-req")
    _wait_running(url, 2)
    for body in ({"rid": "a-req"}, {"abort_all": True}):
        assert httpx.post(f"{url}/abort_request", json=body, headers=KB).status_code == 200
    tb.join(timeout=60)
    assert b["res"].json()["meta_info"]["finish_reason"]["type"] == "abort"  # B's own
    ta.join(timeout=60)
    assert a["res"].json()["meta_info"]["finish_reason"]["type"] == "length"  # untouched
    info = idle_info(url, headers=ROOT)
    assert info["token_usage"] == 0 and info["integrity_error"] is None


def test_global_statistics_are_for_the_admin_only(url):
    for path in ("/get_server_info", "/metrics", "/flush_cache"):
        res = httpx.get(f"{url}{path}", headers=KB)
        assert res.status_code == 403 and "admin" in res.json()["error"]["message"], path
    assert httpx.get(f"{url}/get_server_info", headers=ROOT).status_code == 200
    assert httpx.get(f"{url}/v1/models", headers=KB).status_code == 200
    assert httpx.get(f"{url}/v1/models").status_code == 401


def test_coarse_and_off_cache_reports(tiny_model_factory):
    levels = (("coarse", lambda n: n % 256 == 0 and n >= 256), ("off", lambda n: n == 0))
    for level, check in levels:
        proc, url = _start(str(tiny_model_factory("llama")), "--cache-report", level)
        try:
            body = {"text": PROMPT * 2, "sampling_params": {"max_new_tokens": 1}}
            httpx.post(f"{url}/generate", json=body, timeout=30)
            res = httpx.post(f"{url}/generate", json=body, timeout=30).json()
            meta = res["meta_info"]
            assert check(meta["cached_tokens"]), (level, meta)
            chat = {"messages": [{"role": "user", "content": PROMPT * 2}], "max_tokens": 1}
            httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=30)
            res = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=30).json()
            assert check(res["usage"]["prompt_tokens_details"]["cached_tokens"]), level
        finally:
            stop_server(proc)
