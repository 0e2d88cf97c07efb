"""`radixlm serve --dp 2` on loopback: two workers behind smg or vllm-router.

One launch (smg, cache_aware) serves the official openai client and SGLang's
`RuntimeEndpoint` programs through the router, keeps tenants (cache salts) apart, and
answers every probe and load poll of smg and of vllm-router without a 404. A second
launch (round_robin, slower steps) loses a worker to kill -9 mid-run: later requests
succeed and the restarted worker rejoins; then SIGINT stops every process, checked by
PID. A third (vllm-router, kv_aware) routes by the workers' KV events alone.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from e2e.server_process import fault_env, pid_alive, read_log

HERE = Path(__file__).parent
BANNER = re.compile(r"radixlm: (\d+) workers \((.*)\) behind (\S+) --policy (\S+) \(pid (\d+)\)")
WORKER = re.compile(r"(http://127\.0\.0\.1:\d+) pid (\d+)")
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
         "lambda", "sigma", "omega"]  # fmt: skip


def _ports_free(base: int) -> bool:
    for port in (base, base + 1, base + 2, base + 101, base + 102, base + 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_base_port() -> int:
    """A port P with P, P+1, P+2 (workers), P+101, P+102 (KV events), P+200 (metrics) free."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + 200 < 65536 and _ports_free(base):
            return base
    raise RuntimeError("no free port range")


@dataclass
class Launch:
    url: str
    proc: subprocess.Popen
    workers: list[str]
    worker_pids: list[int]
    router_pid: int
    model: str

    def engine_pids(self) -> list[int]:
        return [httpx.get(f"{w}/get_server_info").json()["engine_pid"] for w in self.workers]


def start_dp(model: str, policy: str, extra: list[str] = (), env: dict | None = None,
             timeout: float = 300.0) -> Launch:  # fmt: skip
    """`radixlm serve --dp 2` in its own session; returns once its banner is printed."""
    port = free_base_port()
    cmd = [sys.executable, "-m", "radixlm.cli", "--log-level", "info", "serve", "--dp", "2",
           "--router-policy", policy, "--model", model, "--dtype", "float32",
           "--max-total-tokens", "4096", "--port", str(port), *extra]  # fmt: skip
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    proc.log_file = log  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = BANNER.search(read_log(proc))
        if m:
            workers = WORKER.findall(m.group(2))
            return Launch(f"http://127.0.0.1:{port}", proc, [u for u, _ in workers],
                          [int(p) for _, p in workers], int(m.group(5)), model)  # fmt: skip
        if proc.poll() is not None:
            raise RuntimeError(f"the launch exited early:\n{read_log(proc)[-4000:]}")
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"no banner in {timeout} s:\n{read_log(proc)[-4000:]}")


def stop_dp(launch: Launch) -> int:
    """SIGINT to the launcher's PID (what Ctrl-C sends); returns its exit status."""
    launch.proc.send_signal(signal.SIGINT)
    try:
        return launch.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(launch.proc.pid, signal.SIGKILL)
        raise


def assert_all_gone(pids: list[int], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [p for p in pids if pid_alive(p)] == [], "a process outlived the launch"


def generate(url: str, text: str, salt: str | None = None, max_new_tokens: int = 4,
             timeout: float = 60) -> httpx.Response:  # fmt: skip
    body = {"text": text, "sampling_params": {"max_new_tokens": max_new_tokens,
                                              "temperature": 0}}  # fmt: skip
    if salt is not None:
        body["cache_salt"] = salt
    return httpx.post(f"{url}/generate", json=body, timeout=timeout)


def access_404s(log: str) -> list[str]:
    return [line for line in log.splitlines() if '" 404' in line]


@pytest.fixture(scope="module")
def dp(tiny_model_factory):
    launch = start_dp(str(tiny_model_factory("llama")), "cache_aware")
    yield launch
    pids = [launch.proc.pid, launch.router_pid, *launch.worker_pids, *launch.engine_pids()]
    assert stop_dp(launch) == 0, read_log(launch.proc)[-3000:]
    assert_all_gone(pids)


def test_workers_are_pinned_to_their_own_cpu(dp):
    cpus = sorted(os.sched_getaffinity(0))
    shares = [sorted(os.sched_getaffinity(p)) for p in dp.worker_pids]
    engines = [sorted(os.sched_getaffinity(p)) for p in dp.engine_pids()]
    assert shares == engines  # the engine inherits its worker's CPUs
    if len(cpus) >= 2:
        assert not set(shares[0]) & set(shares[1]) and sorted(shares[0] + shares[1]) == cpus
    info = httpx.get(f"{dp.workers[0]}/server_info").json()
    assert (info["dp_size"], info["tp_size"]) == (1, 1)


def test_smg_registers_and_polls_without_404(dp):
    time.sleep(3)  # a few load-poll rounds
    log = read_log(dp.proc)
    for path in ("/v1/models", "/loads"):
        assert f'"GET {path}' in log, f"smg never asked {path}"
    assert access_404s(log) == []


def test_vllm_router_registers_and_polls_without_404(dp):
    from radixlm.scaleout.config import RouterConfig
    from radixlm.scaleout.router import router_command

    port = free_base_port()
    cfg = RouterConfig(worker_urls=tuple(dp.workers), router="vllm-router", policy="cache_aware",
                       port=port, prometheus_port=port + 200)  # fmt: skip
    argv, env = router_command(cfg)
    before = len(read_log(dp.proc))
    proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        r = generate(f"http://127.0.0.1:{port}", "hello through vllm-router")
        assert r.status_code == 200, r.text
        time.sleep(2)
    finally:
        proc.terminate()
        proc.wait(20)
    assert access_404s(read_log(dp.proc)[before:]) == []


def test_openai_client_through_smg(dp):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{dp.url}/v1", api_key="none")
    [model] = [m.id for m in client.models.list().data]
    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hi"}], max_tokens=6,
        temperature=0)  # fmt: skip
    direct = httpx.post(f"{dp.workers[1]}/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 6,
        "temperature": 0}).json()  # fmt: skip
    assert chat.choices[0].message.content == direct["choices"][0]["message"]["content"]
    assert chat.usage.completion_tokens == direct["usage"]["completion_tokens"]
    stream = client.completions.create(model=model, prompt="Once upon", max_tokens=5,
                                       temperature=0, stream=True)  # fmt: skip
    text = "".join(c.choices[0].text for c in stream if c.choices)
    whole = client.completions.create(model=model, prompt="Once upon", max_tokens=5,
                                      temperature=0)  # fmt: skip
    assert text == whole.choices[0].text and whole.usage.completion_tokens == 5


@pytest.mark.skipif(importlib.util.find_spec("sglang") is None, reason="sglang not installed")
def test_sglang_runtime_endpoint_programs_through_smg(dp):
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[2]); import sglang as sgl;"
        "import sglang_programs as p; b = sgl.RuntimeEndpoint(sys.argv[1]);"
        "sgl.set_default_backend(b);"
        "print(json.dumps({n: getattr(p, 'run_' + n)(b) for n in "
        "('few_shot', 'batch', 'multi_turn', 'stream')}))"
    )
    done = subprocess.run([sys.executable, "-c", code, dp.url, str(HERE)], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    # (`select` is left out: it sends a list of texts in one /generate, and smg 1.13.0
    # answers 400 "text: invalid type: sequence"; see docs/scale-out.md.)
    assert len(out["batch"]["answers"]) == 4 and all(out["batch"]["answers"])
    assert "".join(out["stream"]["chunks"]) == out["stream"]["more"]
    assert out["few_shot"]["meta"]["completion_tokens"] > 0
    assert out["multi_turn"]["second"] is not None


def test_different_salts_never_share_cached_tokens_through_the_router(dp):
    prefix = " ".join(WORDS * 4)
    for w in dp.workers:  # tenant-a's prefix on both workers: wherever the router sends
        assert generate(w, prefix + " warm", salt="tenant-a").status_code == 200
    again = generate(dp.url, prefix + " two", salt="tenant-a").json()["meta_info"]
    assert again["cached_tokens"] > 0  # the tenant reuses its own prefix through the router
    for salt in ("tenant-b", None, "tenant-c"):
        meta = generate(dp.url, prefix + " three", salt=salt).json()["meta_info"]
        assert meta["cached_tokens"] == 0, (salt, meta)


def _fire(url: str, n: int, max_new_tokens: int) -> list[int | str]:
    def one(i: int) -> int | str:
        try:
            return generate(url, f"request {i} " + " ".join(WORDS), max_new_tokens=max_new_tokens,
                            timeout=120).status_code  # fmt: skip
        except httpx.HTTPError as e:
            return type(e).__name__

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_kill_9_of_a_worker_then_requests_succeed_and_it_rejoins(tiny_model_factory):
    fast_health = ["--router-arg=--health-check-interval-secs", "--router-arg=1",
                   "--router-arg=--health-failure-threshold", "--router-arg=1"]  # fmt: skip
    launch = start_dp(str(tiny_model_factory("llama")), "round_robin", fast_health,
                      env=fault_env(step_delay=0.02))  # fmt: skip
    pids = [launch.proc.pid, launch.router_pid, *launch.worker_pids, *launch.engine_pids()]
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            inflight = pool.submit(_fire, launch.url, 6, 150)  # ~3 s each at 20 ms a step
            running = _running(launch.workers[0])
            os.kill(launch.worker_pids[0], signal.SIGKILL)
            statuses = inflight.result()
        failed = [s for s in statuses if s != 200]
        print(f"kill -9 with {running} requests running on the worker, {len(statuses)} in "
              f"flight through the router: {len(failed)} failed {failed}")
        assert running > 0
        after = [generate(launch.url, f"after {i}").status_code for i in range(10)]
        assert after == [200] * 10
        # The launcher starts the worker again on its port; the router takes it back.
        m = re.search(r"started again as pid (\d+)", _wait_for(launch.proc, "started again"))
        assert m
        pids.append(int(m.group(1)))
        _wait_healthy(launch.workers[0])
        pids.append(httpx.get(f"{launch.workers[0]}/get_server_info").json()["engine_pid"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert generate(launch.url, "rejoin?").status_code == 200
            info = httpx.get(f"{launch.workers[0]}/get_server_info").json()
            if info["prompt_tokens"] > 0:
                break
        else:
            pytest.fail("the restarted worker got no request through the router")
    finally:
        status = stop_dp(launch)
    assert status == 0
    assert_all_gone(pids)


def _running(url: str, timeout: float = 30) -> int:
    """Requests running on worker `url`, once there are any (0 after `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = httpx.get(f"{url}/get_server_info").json()["num_running_reqs"]
        if n:
            return n
        time.sleep(0.05)
    return 0


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = read_log(proc)
        if text in log:
            return log
        time.sleep(0.3)
    raise AssertionError(f"{text!r} never appeared:\n{read_log(proc)[-3000:]}")


def _wait_healthy(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not come back")


def _completion(url: str, model: str, prompt: str) -> dict:
    r = httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": prompt,
                                                  "max_tokens": 1, "temperature": 0},
                   timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    return r.json()["usage"]


def test_vllm_router_kv_aware_follows_the_kv_events(tiny_model_factory):
    """Prefixes computed on a worker directly (the router never saw them) are found
    through the router: only the worker's KV events can have told it. After a flush of
    that worker (AllBlocksCleared) and the prefix computed on the other one, the router
    follows it there."""
    launch = start_dp(str(tiny_model_factory("llama")), "kv_aware")
    pids = [launch.proc.pid, launch.router_pid, *launch.worker_pids, *launch.engine_pids()]
    try:
        model = httpx.get(f"{launch.url}/v1/models").json()["data"][0]["id"]
        rng = random.Random(0)
        hits = []
        for i in range(6):
            prefix = " ".join(rng.choice(WORDS) for _ in range(40))
            warm = _completion(launch.workers[i % 2], model, prefix)
            time.sleep(0.5)  # the events reach the router
            usage = _completion(launch.url, model, prefix + " and then")
            hits.append(usage["prompt_tokens_details"]["cached_tokens"])
            assert hits[-1] >= warm["prompt_tokens"] // 16 * 16 - 16, (i, hits, warm)
        prefix = " ".join(rng.choice(WORDS) for _ in range(40))
        _completion(launch.workers[0], model, prefix)
        assert httpx.post(f"{launch.workers[0]}/flush_cache").status_code == 200
        warm = _completion(launch.workers[1], model, prefix)
        time.sleep(0.5)
        usage = _completion(launch.url, model, prefix + " moved")
        assert usage["prompt_tokens_details"]["cached_tokens"] >= warm["prompt_tokens"] - 32
    finally:
        status = stop_dp(launch)
    assert status == 0
    assert_all_gone(pids)


def test_worker_load_routes_in_sglang_shape(server):
    """The routes a router polls, on one plain server (the session's shared one)."""
    assert httpx.get(f"{server.url}/version").json()["version"]
    [load] = httpx.get(f"{server.url}/get_load").json()
    assert set(load) == {"dp_rank", "num_reqs", "num_waiting_reqs", "num_tokens"}
    body = httpx.get(f"{server.url}/v1/loads", params={"include": "all"}).json()
    [entry] = body["loads"]
    assert body["dp_rank_count"] == 1 and entry["dp_rank"] == 0
    assert entry["max_total_num_tokens"] == 4096 and 0 <= entry["token_usage"] <= 1
    assert entry["num_total_reqs"] == entry["num_running_reqs"] + entry["num_waiting_reqs"]
    assert {"memory", "queues"} <= set(entry)
    assert httpx.get(f"{server.url}/loads").json()["loads"][0].keys() >= {"cache_hit_rate"}
    bad = httpx.get(f"{server.url}/v1/loads", params={"include": "core,gpu"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "include"
