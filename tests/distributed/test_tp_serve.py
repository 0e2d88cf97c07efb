"""`radixlm serve --tp 2` end to end: a greedy /generate answers what TP=1 answers, and
stopping the server leaves no tensor-parallel rank behind."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import httpx

import radixlm
from tests.e2e.server_process import free_port, pid_alive, read_log, start_server, stop_server
from tests.helpers.tiny_models import write_tiny_model

GREEDY = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
PROMPT = list(range(10, 30))


def _children(pid: int) -> list[int]:
    """The direct children of `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_serve_tp2_generates_tp1_tokens(tmp_path: Path):
    model = str(write_tiny_model(tmp_path / "m", "llama"))
    with radixlm.Engine(model=model, dtype="float32", quantization="none",
                        max_total_tokens=1024) as eng:  # fmt: skip
        expected = eng.generate(input_ids=PROMPT, sampling_params=GREEDY)["output_ids"]
    port = free_port()
    cmd = [sys.executable, "-m", "radixlm.cli", "--log-level", "warning", "serve", "--tp", "2",
           "--model", model, "--port", str(port), "--dtype", "float32", "--quantization",
           "none", "--device", "cpu", "--max-total-tokens", "1024"]  # fmt: skip
    proc = start_server(cmd, port, env={"OMP_NUM_THREADS": "1"})
    try:
        url = f"http://127.0.0.1:{port}"
        info = httpx.get(f"{url}/get_server_info").json()
        assert (info["dp_size"], info["tp_size"]) == (1, 2)
        engine_pid = info["engine_pid"]
        ranks = _children(engine_pid)
        assert len(ranks) == 1, read_log(proc)  # rank 1, started by the engine (rank 0)
        for _ in range(2):  # the second one hits the radix cache
            body = {"input_ids": PROMPT, "sampling_params": GREEDY}
            r = httpx.post(f"{url}/generate", json=body, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["output_ids"] == expected
        os.kill(engine_pid, signal.SIGKILL)  # rank 0 dies: its rank 1 must not linger
        _wait_gone(ranks)
        assert all(_gone(p) for p in ranks), "a rank outlived its killed rank 0"
        # the server starts a new engine (and rank 1); /health may still say 200 for a
        # moment before the death is noticed, so wait for a new engine pid as well
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _replaced(url, engine_pid):
            time.sleep(0.3)
        r = httpx.post(f"{url}/generate", json=body, timeout=90)
        assert r.status_code == 200 and r.json()["output_ids"] == expected, r.text
        ranks += _children(httpx.get(f"{url}/get_server_info").json()["engine_pid"])
    finally:
        stop_server(proc, signal.SIGINT)
    _wait_gone(ranks)
    assert len(ranks) == 2 and all(_gone(p) for p in ranks)


def _replaced(url: str, old_pid: int) -> bool:
    """A new engine (not `old_pid`) is up and the server says it is healthy."""
    try:
        pid = httpx.get(f"{url}/get_server_info").json().get("engine_pid")
        return pid not in (None, old_pid) and httpx.get(f"{url}/health").status_code == 200
    except (httpx.HTTPError, ValueError):
        return False


def _gone(pid: int) -> bool:
    """Exited (a zombie waiting for its reaper counts: it runs nothing)."""
    try:
        return not pid_alive(pid) or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def _wait_gone(pids: list[int], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
