"""SGLang's own `bench_serving` against a live `radixlm serve` on SmolLM2 with default
settings, at the shared-prefix shape peers publish: 4 groups x 8 prompts, a 1024-token
system prompt, 64-token questions, 32 output tokens, all sent at once.

The client runs unchanged (`benchmarks/sglang_bench_serving.py`) in the virtualenv that
`make install` layers on `.venv` for it (`.venv-sglang`), through the OpenAI completions
route with token-id prompts (`--backend vllm`) in float32 and the native route with its
cache report (`--backend sglang --cache-report`) in bfloat16. Every request must succeed,
the cache must serve what the shape shares, and the KV pool must be whole afterwards.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from e2e.server_process import free_port, idle_info, read_log, start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / ".venv-sglang" / "bin" / "python"
SHAPE = ["--dataset-name", "generated-shared-prefix", "--gsp-num-groups", "4",
         "--gsp-prompts-per-group", "8", "--gsp-system-prompt-len", "1024",
         "--gsp-question-len", "64", "--gsp-output-len", "32", "--request-rate", "inf",
         "--temperature", "0", "--seed", "42"]  # fmt: skip
# 29 of the 33 prompts sent (the warm-up is one of group 0's) reuse their group's system
# prompt (~1,080 of ~1,140 tokens): the best any cache can do is about 0.86.
MIN_HIT_RATE = 0.8

pytestmark = pytest.mark.skipif(
    not CLIENT.is_file(),
    reason="SGLang's bench_serving environment is missing: `make install` builds .venv-sglang",
)


def run_bench(url: str, backend: list[str], out: Path) -> dict:
    """Run bench_serving to completion against `url`; return its JSON result line."""
    port = url.rsplit(":", 1)[1]
    cmd = [str(CLIENT), str(ROOT / "benchmarks" / "sglang_bench_serving.py"), *backend,
           "--host", "127.0.0.1", "--port", port, *SHAPE, "--output-file", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=480, cwd=out.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text().splitlines()[-1])


@pytest.mark.parametrize(
    ("dtype", "backend"),
    [("float32", ["--backend", "vllm"]), ("bfloat16", ["--backend", "sglang", "--cache-report"])],
)
def test_shared_prefix_benchmark_completes(smollm2_path, tmp_path, dtype, backend):
    port = free_port()
    cmd = [str(ROOT / ".venv" / "bin" / "radixlm"), "serve", "--model", str(smollm2_path),
           "--dtype", dtype, "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    proc = start_server(cmd, port, timeout=180)
    url = f"http://127.0.0.1:{port}"
    try:
        start = time.monotonic()
        result = run_bench(url, backend, tmp_path / "result.jsonl")
        assert result["completed"] == 32, result.get("errors")
        assert result["total_output_tokens"] == 32 * 32
        if "cache_report" in result:
            assert result["cache_report"]["cache_hit_rate_pct"] >= 100 * MIN_HIT_RATE
        time.sleep(0.5)  # the engine checks KV integrity once idle
        info = idle_info(url)
        assert info["cache_hit_rate"] >= MIN_HIT_RATE
        assert info["integrity_error"] is None and info["token_usage"] == 0
        assert "ERROR" not in read_log(proc), read_log(proc)[-3000:]
        print(f"{dtype}: 32/32 in {time.monotonic() - start:.0f} s, hit rate "
              f"{info['cache_hit_rate']:.3f}")  # fmt: skip
    finally:
        stop_server(proc)
