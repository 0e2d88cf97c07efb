"""A soak of a live server: many requests of random sizes, a share cancelled, two tenants.

    .venv/bin/python benchmarks/soak.py [--requests 10000] [--cancel 0.3] [--pool 3000] \
        [--model PATH] [--out benchmarks/soak]

It starts `radixlm.launch_server` (a tiny random Llama unless `--model` is given,
float32, a KV pool of `--pool` tokens, two tenant keys and an admin key), sends the
requests from `--concurrency` clients (half streamed; system prompts shared per
tenant so the cache works and evicts), cancels `--cancel` of them after a
random delay of up to 0.15 s (those that finish sooner count as completed), and
samples the RSS of the HTTP and engine processes each second. It writes
`soak.json` (the figures and the samples) and `soak.png` (RSS over time), and
prints the figures: leaked KV slots and the integrity check once idle, the 5xx
count, p50/p99 latency of the requests that completed, and each process's RSS at
the end against its RSS after warm-up (the first 10% of requests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
TENANTS = {"ka": "alice", "kb": "bob"}
ADMIN = {"Authorization": "Bearer root"}


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def start(model: str, pool: int, keys: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "radixlm.launch_server", "--log-level", "warning",
           "--dtype", "float32", "--model", model, "--port", str(port),
           "--max-total-tokens", str(pool), "--api-key", "root", "--api-key-file", str(keys),
           "--disable-request-log", "--max-queued-requests", "4096"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not start")


def request_body(rng: random.Random, tenant: str) -> dict:
    system = f"You are the assistant of {tenant}. " + "Answer briefly. " * rng.randint(1, 6)
    words = ["alpha", "beta", "gamma", "delta", "x", "y"]
    user = " ".join(rng.choice(words) for _ in range(rng.randint(1, 60)))
    return {"text": system + user, "stream": rng.random() < 0.5,
            "sampling_params": {"max_new_tokens": rng.randint(1, 64), "temperature": 0.7}}


async def one(
    client: httpx.AsyncClient, url: str, body: dict, key: str, cancel_after: float | None, out: dict
) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    start = time.perf_counter()

    async def send() -> int:
        if body["stream"]:
            async with client.stream("POST", f"{url}/generate", json=body, headers=headers) as res:
                async for _ in res.aiter_lines():
                    pass
                return res.status_code
        return (await client.post(f"{url}/generate", json=body, headers=headers)).status_code

    try:
        if cancel_after is None:
            status = await send()
        else:
            status = await asyncio.wait_for(send(), cancel_after)
    except TimeoutError:
        out["cancelled"] += 1
        return
    except httpx.HTTPError:
        out["transport_errors"] += 1
        return
    out["status"][status] = out["status"].get(status, 0) + 1
    if status == 200:
        out["latency"].append(time.perf_counter() - start)


async def drive(url: str, args: argparse.Namespace, samples: list, pids: tuple[int, int]) -> dict:
    rng = random.Random(args.seed)
    out: dict = {"status": {}, "latency": [], "cancel_planned": 0, "cancelled": 0,
                 "transport_errors": 0, "done": 0}  # fmt: skip
    sem = asyncio.Semaphore(args.concurrency)
    t0 = time.perf_counter()

    async def sampler() -> None:
        while True:
            now = time.perf_counter() - t0
            samples.append((now, out["done"], rss_mib(pids[0]), rss_mib(pids[1])))
            await asyncio.sleep(1.0)

    async def task(i: int, client: httpx.AsyncClient) -> None:
        async with sem:
            key = "ka" if i % 2 else "kb"
            cancel = rng.uniform(0.0, 0.15) if rng.random() < args.cancel else None
            out["cancel_planned"] += cancel is not None
            await one(client, url, request_body(rng, TENANTS[key]), key, cancel, out)
            out["done"] += 1

    watch = asyncio.create_task(sampler())
    limits = httpx.Limits(max_connections=args.concurrency * 2)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*(task(i, client) for i in range(args.requests)))
    watch.cancel()
    out["seconds"] = time.perf_counter() - t0
    return out


def summarize(out: dict, samples: list, info: dict, requests: int) -> dict:
    lat = sorted(out["latency"])
    warm = next((s for s in samples if s[1] >= requests // 10), samples[0])
    last = samples[-1]
    return {
        "requests": requests, "seconds": round(out["seconds"], 1),
        "status_counts": out["status"], "cancel_planned": out["cancel_planned"],
        "cancelled": out["cancelled"],
        "transport_errors": out["transport_errors"],
        "5xx": sum(n for code, n in out["status"].items() if code >= 500),
        "p50_s": round(statistics.median(lat), 4) if lat else None,
        "p99_s": round(lat[int(0.99 * (len(lat) - 1))], 4) if lat else None,
        "leaked_tokens": info["token_usage"], "integrity_error": info["integrity_error"],
        "http_rss_mib": {"warm": round(warm[2], 1), "end": round(last[2], 1)},
        "engine_rss_mib": {"warm": round(warm[3], 1), "end": round(last[3], 1)},
    }


def plot(samples: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s[0] for s in samples]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(t, [s[2] for s in samples], label="HTTP process")
    ax.plot(t, [s[3] for s in samples], label="engine process")
    ax.set_xlabel("seconds"), ax.set_ylabel("RSS (MiB)"), ax.set_ylim(bottom=0)
    ax.set_title("RSS during the soak"), ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--cancel", type=float, default=0.3)
    p.add_argument("--pool", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--model", default=None, help="a model directory (default: a tiny random Llama)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--port", type=int, default=30123)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "soak"))
    args = p.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            sys.path.insert(0, str(ROOT / "tests"))
            from helpers.tiny_models import write_tiny_model

            model = str(write_tiny_model(Path(tmp) / "tiny", "llama"))
        keys = Path(tmp) / "keys"
        keys.write_text("".join(f"{k}:{t}\n" for k, t in TENANTS.items()))
        proc = start(model, args.pool, keys, args.port)
        url = f"http://127.0.0.1:{args.port}"
        try:
            engine = httpx.get(f"{url}/get_server_info", headers=ADMIN).json()["engine_pid"]
            samples: list = []
            out = asyncio.run(drive(url, args, samples, (proc.pid, engine)))
            time.sleep(1.0)  # the engine checks KV integrity once idle
            info = httpx.get(f"{url}/get_server_info", headers=ADMIN).json()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    result = summarize(out, samples, info, args.requests)
    record = {"result": result, "rss_samples": samples}
    (out_dir / "soak.json").write_text(json.dumps(record, indent=1))
    plot(samples, out_dir / "soak.png")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
