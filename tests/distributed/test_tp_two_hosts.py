"""Two hosts: one tensor-parallel rank in each of two network namespaces joined by a veth
pair, started with --nnodes 2 --node-rank {0,1} --dist-init-addr on the namespace
addresses; a greedy /generate answers what TP=1 answers. Skips where namespaces
cannot be created (needs root and iproute2)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import radixlm
from tests.e2e.server_process import read_log, stop_server
from tests.helpers.tiny_models import write_tiny_model

GREEDY = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
PROMPT = list(range(10, 30))
ADDR = ("10.231.7.1", "10.231.7.2")


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture
def two_hosts():
    """(namespace, veth name) of the two hosts; removed afterwards."""
    if shutil.which("ip") is None:
        pytest.skip("two-host test: iproute2 ('ip') is not installed")
    tag = str(os.getpid() % 100000)
    hosts = [(f"rlm{tag}a", f"rva{tag}"), (f"rlm{tag}b", f"rvb{tag}")]
    made = []
    try:
        for ns, _ in hosts:
            r = _ip("netns", "add", ns)
            if r.returncode:
                why = r.stderr.strip()
                pytest.skip(f"two-host test: cannot create a network namespace ({why})")
            made.append(ns)
        (na, va), (nb, vb) = hosts
        steps = [("link", "add", va, "type", "veth", "peer", "name", vb),
                 ("link", "set", va, "netns", na), ("link", "set", vb, "netns", nb)]  # fmt: skip
        for (ns, veth), addr in zip(hosts, ADDR, strict=True):
            steps += [("-n", ns, "addr", "add", f"{addr}/24", "dev", veth),
                      ("-n", ns, "link", "set", veth, "up"), ("-n", ns, "link", "set", "lo", "up")]
        for step in steps:
            r = _ip(*step)
            if r.returncode:
                pytest.skip(f"two-host test: cannot set up the veth pair ({r.stderr.strip()})")
        yield hosts
    finally:
        for ns in made:
            _ip("netns", "del", ns)


def _in_ns(ns: str, veth: str, argv: list[str], log) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": veth}
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=log,
                            stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip


def _query(ns: str, port: int, timeout: float = 90.0) -> dict:
    """POST /generate from inside namespace `ns` once the server there is healthy."""
    code = (
        "import httpx, json, sys, time\n"
        f"url = 'http://127.0.0.1:{port}'\n"
        f"deadline = time.monotonic() + {timeout}\n"
        "while True:\n"
        "    try:\n"
        "        if httpx.get(url + '/health', timeout=1).status_code == 200: break\n"
        "    except httpx.HTTPError: pass\n"
        "    if time.monotonic() > deadline: sys.exit('not healthy')\n"
        "    time.sleep(0.3)\n"
        f"body = json.loads({json.dumps({'input_ids': PROMPT, 'sampling_params': GREEDY})!r})\n"
        "print(json.dumps(httpx.post(url + '/generate', json=body, timeout=60).json()))\n"
    )
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=timeout + 70)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_tp2_over_two_hosts_matches_tp1(tmp_path: Path, two_hosts):
    model = str(write_tiny_model(tmp_path / "m", "llama"))
    with radixlm.Engine(model=model, dtype="float32", quantization="none",
                        max_total_tokens=1024) as eng:  # fmt: skip
        expected = eng.generate(input_ids=PROMPT, sampling_params=GREEDY)["output_ids"]
    port = 30517
    procs = []
    try:
        for node, (ns, veth) in enumerate(two_hosts):
            argv = [sys.executable, "-m", "radixlm.cli", "--log-level", "warning", "serve",
                    "--tp", "2", "--nnodes", "2", "--node-rank", str(node),
                    "--dist-init-addr", f"{ADDR[0]}:29617", "--model", model,
                    "--port", str(port), "--dtype", "float32", "--quantization", "none",
                    "--device", "cpu", "--max-total-tokens", "1024"]  # fmt: skip
            log = open(tmp_path / f"node{node}.log", "w+")  # noqa: SIM115
            procs.append(_in_ns(ns, veth, argv, log))
            procs[-1].log_file = log  # type: ignore[attr-defined]
        got = _query(two_hosts[0][0], port)
        assert got.get("output_ids") == expected, [read_log(p) for p in procs]
    finally:
        stop_server(procs[0], signal.SIGINT)
        deadline = time.monotonic() + 20
        while procs[1].poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if procs[1].poll() is None:
            procs[1].kill()
    assert procs[1].returncode == 0, read_log(procs[1])  # node 1's rank left when told to
