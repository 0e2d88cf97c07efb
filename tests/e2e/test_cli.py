"""The `radixlm` console script, run as a user would, on a tiny model."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys

import pytest
from e2e.server_process import free_port

from radixlm.args import build_parser, chat_config_from_args, server_config_from_args
from radixlm.config import SchedulePolicyName
from radixlm.server.access import ApiKey

TURN = re.compile(r"\[(\d+) prompt tokens, (\d+) cached, (\d+) generated in")


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "radixlm.cli", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)


def test_one_shot_generation_on_tiny_model(tiny_model_factory):
    model = str(tiny_model_factory("llama"))
    res = _run("generate", "--model", model, "--prompt", "hello", "--max-new-tokens", "6")
    assert res.returncode == 0, res.stderr
    assert "llama, 2 layers" in res.stderr  # the banner names the model it runs
    assert "generated in" in res.stderr


def test_interactive_chat_reads_turns_until_eof(tiny_model_factory):
    model = str(tiny_model_factory("qwen2"))
    res = _run("chat", "--model", model, "--max-new-tokens", "4", stdin="hi\nagain\nthird\n")
    assert res.returncode == 0, res.stderr
    turns = [tuple(map(int, t)) for t in TURN.findall(res.stderr)]
    assert len(turns) == 3
    # Each turn's prompt is served from the radix tree up to the end of the previous
    # answer: all of it but the last token sampled (its K/V is never computed).
    for (prompt, _, generated), (_, cached, _) in itertools.pairwise(turns):
        assert generated == 4 and cached == prompt + generated - 1


def test_bad_flags_name_the_flag():
    res = _run("generate", "--temperature", "-1", "--prompt", "x")
    assert res.returncode == 2
    assert "--temperature" in res.stderr
    with pytest.raises(SystemExit):
        build_parser().parse_args(["chat", "--dtype", "int3"])


def test_missing_model_is_a_clear_error(tmp_path):
    res = _run("generate", "--model", str(tmp_path / "absent"), "--prompt", "x")
    assert res.returncode != 0
    assert "radixlm: error: no model at" in res.stderr
    assert "Traceback" not in res.stderr


def test_flags_become_frozen_configs():
    ns = build_parser().parse_args(["chat", "--top-p", "0.5", "--seed", "3", "--dtype", "bfloat16"])
    cfg = chat_config_from_args(ns)
    assert (cfg.params.top_p, cfg.params.seed, cfg.load.dtype) == (0.5, 3, "bfloat16")


def test_key_flags_and_files_name_tenants(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# tenants\nka:alice\nkb:bob  # second\n\nroot\n")
    ns = build_parser().parse_args(["serve", "--api-key", "k0:ops", "--api-key-file", str(keys),
                                    "--cache-report", "coarse", "--allowed-hosts", "a.b, c.d"])
    access = server_config_from_args(ns).access
    assert access.api_keys == (ApiKey("k0", "ops"), ApiKey("ka", "alice"), ApiKey("kb", "bob"),
                               ApiKey("root"))  # fmt: skip
    assert access.allowed_hosts == ("a.b", "c.d") and access.cache_report == "coarse"
    assert access.caller("Bearer kb").tenant == "bob" and access.caller("Bearer root").admin
    assert access.caller("Bearer nope") is None
    assert (access.reported_cached(700), access.reported_cached(255)) == (512, 0)
    keys.write_text("ka:alice\nka:bob\n")
    with pytest.raises(ValueError, match=r"^--api-key: the same key"):
        server_config_from_args(ns)
    keys.write_text("bad key:alice\n")
    with pytest.raises(ValueError, match=r"^--api-key-file: .* line 1"):
        server_config_from_args(ns)


def test_serve_flags_become_a_server_config():
    ns = build_parser().parse_args(
        ["serve", "--port", "8080", "--max-total-tokens", "1024", "--disable-radix-cache",
         "--schedule-policy", "fcfs", "--chunked-prefill-size", "64", "--api-key", "k"]
    )  # fmt: skip
    cfg = server_config_from_args(ns)
    assert cfg.port == 8080 and cfg.access.api_keys == (ApiKey("k"),)
    assert cfg.engine.cache.max_total_tokens == 1024 and cfg.engine.cache.disable_radix_cache
    assert cfg.engine.scheduler.schedule_policy == SchedulePolicyName.FCFS
    assert cfg.engine.scheduler.chunked_prefill_size == 64
    with pytest.raises(ValueError, match="--port"):
        server_config_from_args(build_parser().parse_args(["serve", "--port", "0"]))
    # Each config checks its own fields; the error names the flag.
    for flag, value in (("--max-total-tokens", "8"), ("--mem-fraction", "1.5"),
                        ("--max-running-requests", "0"), ("--queue-timeout", "-1")):  # fmt: skip
        with pytest.raises(ValueError, match=f"^{flag}: "):
            server_config_from_args(build_parser().parse_args(["serve", flag, value]))


def test_serve_with_a_missing_model_fails_cleanly(tmp_path):
    res = _run("serve", "--model", str(tmp_path / "absent"), "--port", str(free_port()))
    assert res.returncode == 1
    assert "radixlm: error: no model at" in res.stderr and "Traceback" not in res.stderr
