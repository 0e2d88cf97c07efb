"""The router's command line: smg or vllm-router, run from this Python environment."""

from __future__ import annotations

import os
import sys

from radixlm.scaleout.config import RouterConfig

_LOG_LEVELS = {"smg": {"debug": "debug", "info": "info", "warning": "warn", "error": "error"},
               "vllm-router": {"debug": "debug", "info": "info", "warning": "warning",
                               "error": "error"}}  # fmt: skip


def router_command(cfg: RouterConfig) -> tuple[list[str], dict[str, str]]:
    """The argv and the environment additions that start `cfg`'s router.

    Both routers are Python packages with a Rust core (pinned in pyproject.toml); they
    run as `python -m` of this interpreter, so the pinned versions are the ones used.
    """
    level = _LOG_LEVELS[cfg.router].get(cfg.log_level, "warn")
    common = ["--worker-urls", *cfg.worker_urls, "--policy", cfg.policy, "--host", cfg.host,
              "--port", str(cfg.port), "--log-level", level,
              "--prometheus-port", str(cfg.metrics_port)]  # fmt: skip
    env: dict[str, str] = {}
    if cfg.router == "smg":
        return [sys.executable, "-m", "smg", "launch", *common, *cfg.extra_args], env
    argv = [sys.executable, "-m", "vllm_router.launch_router", *common]
    for url, endpoint in cfg.kv_event_sources:
        argv += ["--kv-event-source", f"{url}={endpoint}"]
    if cfg.kv_event_sources:
        argv += ["--kv-event-block-size", str(cfg.kv_block_size)]
        if cfg.model:
            argv += ["--kv-event-model", cfg.model]
    if cfg.tokenizer:
        env["VLLM_ROUTER_TOKENIZER"] = os.fspath(cfg.tokenizer)  # kv_aware tokenizes with it
    return argv + list(cfg.extra_args), env
