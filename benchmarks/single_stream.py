"""Single-stream decode speed of OpenAI-compatible servers, through one client.

    .venv/bin/python benchmarks/single_stream.py --server radixlm=http://127.0.0.1:30000 \
        --server llama.cpp=http://127.0.0.1:8080 [--prompt-tokens 1000] [--tokens 256] [--runs 3]

Each run streams one `/v1/completions` request (token-id prompt, greedy,
`ignore_eos`, `--tokens` output tokens) and times the chunks: TTFT is the
first chunk, decode tokens/s is (tokens - 1) / (last chunk - first chunk).
The prompt differs per run (its first token changes) so no server answers
from a cached prompt. Servers take turns; the best run of each is reported,
with the ratio to the first server.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import httpx


def one_run(url: str, prompt: list[int], tokens: int) -> tuple[float, float, int]:
    """(TTFT s, decode tokens/s, output tokens) of one streamed completion."""
    body = {"model": "default", "prompt": prompt, "max_tokens": tokens, "temperature": 0,
            "ignore_eos": True, "stream": True}  # fmt: skip
    start = time.perf_counter()
    stamps: list[float] = []
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                stamps.append(time.perf_counter())
    n = len(stamps)
    decode = (n - 1) / (stamps[-1] - stamps[0]) if n > 1 else 0.0
    return stamps[0] - start, decode, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", action="append", required=True, help="NAME=URL (repeatable)")
    ap.add_argument("--prompt-tokens", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=49152)
    args = ap.parse_args()
    servers = [s.split("=", 1) for s in args.server]
    rng = random.Random(0)
    base = [rng.randrange(100, args.vocab) for _ in range(args.prompt_tokens)]
    best: dict[str, tuple[float, float, int]] = {}
    for run in range(args.runs):
        prompt = [100 + run, *base[1:]]
        for name, url in servers:
            ttft, decode, n = one_run(url, prompt, args.tokens)
            print(f"run {run} {name}: TTFT {ttft:.2f} s, decode {decode:.1f} tok/s ({n} chunks)")
            if name not in best or decode > best[name][1]:
                best[name] = (ttft, decode, n)
    first = servers[0][0]
    shape = f"{args.prompt_tokens}-token prompt, {args.tokens} output tokens"
    print(f"\n{shape}, best of {args.runs}\n")
    print("| server | TTFT s | decode tok/s | vs " + first + " |")
    print("|---|---:|---:|---:|")
    for name, _ in servers:
        ttft, decode, _ = best[name]
        print(f"| {name} | {ttft:.2f} | {decode:.1f} | {decode / best[first][1]:.2f}x |")


if __name__ == "__main__":
    main()
