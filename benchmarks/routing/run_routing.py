"""Routing policies behind `radixlm serve --dp 2`: cache_aware vs kv_aware vs round_robin.

For each policy: start `radixlm serve --dp 2` (two workers, each pinned to its own core
with one thread, KV pool `--max-total-tokens` each), run `radixlm bench run` with the
native backend (token ids: vllm-router's kv_aware matches blocks of token ids) on a
shared-prefix workload of G groups -- G tenants, each with its own system prompt --
whose prefixes do not all fit one worker's pool, then stop the launch with SIGINT.
Finally `radixlm bench report` writes the table (throughput, TTFT, hit rate beside the
oracle) and plots. cache_aware and round_robin run on smg, kv_aware on vllm-router fed
by the workers' KV events.

    python benchmarks/routing/run_routing.py                  # the committed figures
    python benchmarks/routing/run_routing.py --short --model DIR --out /tmp/routing

Figures are only meaningful on a quiet machine (nothing else on the two cores).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
POLICIES = ("cache_aware", "kv_aware", "round_robin")
BANNER = re.compile(r"radixlm: \d+ workers .* behind \S+ --policy \S+ \(pid \d+\) at (\S+)")
# The full run: 8 groups x 1,024-token prompts = 8,192 prefix tokens; a worker holds 6,144.
FULL = {"groups": 8, "prompts_per_group": 8, "system_len": 1024, "question_len": 64,
        "output_len": 32}  # fmt: skip
SHORT = {"groups": 4, "prompts_per_group": 3, "system_len": 128, "question_len": 16,
         "output_len": 4}  # fmt: skip


def free_base_port() -> int:
    """A port P with P..P+2, P+101..P+102 and P+200 free (router, workers, events, metrics)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        ok = base + 200 < 65536
        for port in (base, base + 1, base + 2, base + 101, base + 102, base + 200):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
        if ok:
            return base
    raise RuntimeError("no free port range")


def launch(model: str, policy: str, pool_tokens: int, log) -> tuple[subprocess.Popen, str]:
    """`radixlm serve --dp 2 --router-policy policy`; returns it and the router URL."""
    cmd = [sys.executable, "-m", "radixlm.cli", "--log-level", "warning", "serve", "--dp", "2",
           "--router-policy", policy, "--model", model, "--max-total-tokens", str(pool_tokens),
           "--port", str(free_base_port()), "--disable-request-log"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        log.flush()
        text = Path(log.name).read_text()
        m = BANNER.search(text)
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            raise RuntimeError(f"{policy}: the launch exited:\n{text[-3000:]}")
        time.sleep(1)
    proc.kill()
    raise RuntimeError(f"{policy}: no banner")


def run_policy(args: argparse.Namespace, policy: str, params: dict[str, int]) -> Path:
    out = Path(args.out) / "records" / f"{policy}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        proc, url = launch(args.model, policy, args.pool_tokens, log)
        try:
            bench = [sys.executable, "-m", "radixlm.cli", "bench", "run", "--backend", "native",
                     "--base-url", url, "--workload", "shared-prefix", "--label", policy,
                     "--tokenizer", args.tokenizer or args.model, "--output", str(out),
                     "--no-progress", "--seed", str(args.seed),
                     *(f"--param={k}={v}" for k, v in params.items())]  # fmt: skip
            if args.max_concurrency:
                bench += ["--max-concurrency", str(args.max_concurrency)]
            subprocess.run(bench, check=True)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(120)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tokenizer", default=None, help="default: --model")
    ap.add_argument("--pool-tokens", type=int, default=6144, help="each worker's KV pool")
    ap.add_argument("--max-concurrency", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--short", action="store_true", help="a small workload (a smoke run)")
    ap.add_argument("--out", default=str(HERE), help="records/, RESULTS.md and img/ go here")
    args = ap.parse_args()
    params = SHORT if args.short else FULL
    records = [run_policy(args, p, params) for p in args.policies.split(",")]
    out = Path(args.out)
    subprocess.run([sys.executable, "-m", "radixlm.cli", "bench", "report", *map(str, records),
                    "--markdown", str(out / "RESULTS.md"), "--img-dir", str(out / "img"),
                    "--baseline", "round_robin"], check=True)  # fmt: skip
    print((out / "RESULTS.md").read_text())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
