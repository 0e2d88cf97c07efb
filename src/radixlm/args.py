"""Every command-line flag of `radixlm`, in one place, turned into frozen configs."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

from radixlm.config import (
    QUANTIZATION_MODES,
    ChatConfig,
    LoadConfig,
    SchedulePolicyName,
    ServerConfig,
    build_engine_config,
)
from radixlm.loader import DEFAULT_MODEL
from radixlm.sampling.params import SamplingParams, SamplingParamsError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"a HF model directory, a .gguf file, or {DEFAULT_MODEL!r} (default)",
    )
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="compute and KV dtype (auto: bfloat16 on CUDA and on CPUs with native bf16, "
        "else float32; float32 is the exact mode)",
    )
    g.add_argument(
        "--quantization",
        default="auto",
        choices=QUANTIZATION_MODES,
        help="weight-only quantization (auto: a GGUF file runs in its own precision, "
        "Q8_0 as int8 and Q4_x as int4, when the compute dtype is bfloat16; none: dense)",
    )
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (auto: cuda if present)")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)


def _add_chat_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    _add_sampling_args(p)
    p.add_argument("--prompt", default=None, help="answer this one prompt and exit")
    p.add_argument("--system", default=None, help="a system message for the chat template")
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")


def add_server_args(p: argparse.ArgumentParser) -> None:
    """The flags of `radixlm serve` and `python -m radixlm.launch_server`."""
    _add_model_args(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, default=30000)
    g.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    g.add_argument("--served-model-name", default=None, help="model name in the OpenAI API")
    g.add_argument(
        "--disable-request-log", action="store_true", help="no log line per finished request"
    )
    g.add_argument("--max-n", type=int, default=16, help="the largest n one request may ask for")
    g.add_argument("--max-prompts-per-request", type=int, default=256,
                   help="prompts times n in one API call; more is a 400")  # fmt: skip
    g.add_argument("--max-top-logprobs", type=int, default=20,
                   help="the largest top_logprobs_num on /generate; more is a 400")  # fmt: skip
    g.add_argument("--max-queued-requests", type=int, default=1024,
                   help="requests waiting beyond the running ones; past it a 429")  # fmt: skip
    g.add_argument("--default-max-tokens", type=int, default=2048,
                   help="max_tokens of a chat request without one (within context)")  # fmt: skip
    g.add_argument(
        "--queue-timeout",
        type=float,
        default=None,
        help="abort a request that waits longer than this many seconds in the queue",
    )
    g.add_argument(
        "--engine-restart", action=argparse.BooleanOptionalAction, default=True,
        help="start a new engine process when it dies (default); without, the server exits 1",
    )  # fmt: skip
    g.add_argument("--max-engine-restarts", type=int, default=3,
                   help="engine restarts before the server gives up and exits 1")  # fmt: skip
    e = p.add_argument_group("engine")
    e.add_argument("--max-total-tokens", type=int, default=None, help="KV pool size in tokens")
    e.add_argument(
        "--mem-fraction",
        "--mem-fraction-static",
        type=float,
        default=None,
        help="share of free memory given to the KV pool (when --max-total-tokens is unset)",
    )
    e.add_argument("--disable-radix-cache", action="store_true")
    policies = [p.value for p in SchedulePolicyName]
    e.add_argument("--schedule-policy", default="lpm", choices=policies)
    e.add_argument("--chunked-prefill-size", type=int, default=None)
    e.add_argument("--max-prefill-tokens", type=int, default=None)
    e.add_argument("--max-running-requests", type=int, default=None)
    e.add_argument(
        "--grammar-backend", default="xgrammar", choices=["xgrammar", "none"],
        help="constrained decoding (regex, json_schema, ebnf); none turns it off",
    )  # fmt: skip
    e.add_argument(
        "--disable-jump-forward", action="store_true",
        help="decode a grammar's forced text token by token (for comparison)",
    )  # fmt: skip


def server_config_from_args(ns: argparse.Namespace) -> ServerConfig:
    """Validate parsed server flags into a ServerConfig; raises ValueError naming the flag."""
    engine: dict[str, Any] = {"model": ns.model, "dtype": ns.dtype, "device": ns.device,
                              "quantization": ns.quantization}  # fmt: skip
    for name in ("schedule_policy", "disable_radix_cache", "cache_dir", "cache_dir_max_gb",
                 "grammar_backend",
                 "disable_jump_forward", "queue_timeout"):  # fmt: skip
        engine[name] = getattr(ns, name)
    for name in ("max_total_tokens", "mem_fraction", "chunked_prefill_size",
                 "max_prefill_tokens", "max_running_requests"):  # fmt: skip
    e.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="keep evicted prefixes on disk in DIR, reloaded on a later match "
                   "and after a restart (see docs/cache-tiers.md)")  # fmt: skip
    e.add_argument("--cache-dir-max-gb", type=float, default=10.0,
                   help="size cap of --cache-dir; least recently used entries go first")
        if getattr(ns, name) is not None:
            engine[name] = getattr(ns, name)
    with _as_flag_errors():
        return ServerConfig(
            host=ns.host,
            port=ns.port,
            api_key=ns.api_key,
            served_model_name=ns.served_model_name,
            log_level=getattr(ns, "log_level", "info"),
            disable_request_log=ns.disable_request_log,
            max_n=ns.max_n,
            max_prompts_per_request=ns.max_prompts_per_request,
            max_top_logprobs=ns.max_top_logprobs,
            max_queued_requests=ns.max_queued_requests,
            default_max_tokens=ns.default_max_tokens,
            engine_restart=ns.engine_restart,
            max_engine_restarts=ns.max_engine_restarts,
            engine=build_engine_config(**engine),
        )


@contextlib.contextmanager
def _as_flag_errors() -> Iterator[None]:
    """Turn a config's "field: why" ValueError into "--field: why" (the flag's name)."""
    try:
        yield
    except SamplingParamsError as e:
        raise ValueError(f"--{e.field.replace('_', '-')}: {e.message}") from None
    except ValueError as e:
        field, sep, why = str(e).partition(": ")
        if sep and field.isidentifier():
            raise ValueError(f"--{field.replace('_', '-')}: {why}") from None
        raise


def build_server_parser(prog: str = "radixlm.launch_server") -> argparse.ArgumentParser:
    """A parser with only the server flags (for `python -m radixlm.launch_server`)."""
    parser = argparse.ArgumentParser(prog=prog, description="radixlm HTTP server")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    add_server_args(parser)
    return parser


def _add_bench_args(p: argparse.ArgumentParser) -> None:
    from radixlm.bench.config import BACKENDS

    sub = p.add_subparsers(dest="bench_command", required=True)
    r = sub.add_parser("run", help="send a workload to a system, write a JSON record")
    r.add_argument("--backend", choices=BACKENDS, default="native")
    r.add_argument("--base-url", default=None, help="the server, e.g. http://127.0.0.1:30000")
    r.add_argument("--workload", default="shared-prefix", help="see `radixlm bench workloads`")
    r.add_argument("--param", action="append", default=[], metavar="KEY=INT",
                   help="a workload parameter, e.g. --param groups=4 (repeatable)")  # fmt: skip
    r.add_argument("--model", default=None, help="OpenAI model name, or the transformers model")
    r.add_argument("--tokenizer", default=None, help="HF dir, .gguf, or model name")
    r.add_argument("--label", default=None, help="the system's name in reports")
    r.add_argument("--request-rate", type=float, default=float("inf"), help="req/s (inf: all)")
    r.add_argument("--max-concurrency", type=int, default=None)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--output", default=None, help="write the JSON record here")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--no-warmup", action="store_true")
    r.add_argument("--dtype", default="float32", help="transformers backend weights dtype")
    rep = sub.add_parser("report", help="records -> markdown table and PNG plots")
    rep.add_argument("records", nargs="+", help="JSON records of `radixlm bench run`")
    rep.add_argument("--markdown", default=None, help="write (or update) this markdown file")
    rep.add_argument("--img-dir", default=None, help="write the PNG plots here")
    rep.add_argument("--baseline", action="append", default=[], help="label to compare with")
    sub.add_parser("workloads", help="list the workloads and their parameters")


def bench_config_from_args(ns: argparse.Namespace) -> Any:
    """A BenchRunConfig, BenchReportConfig or BenchListConfig; ValueError names the flag."""
    from radixlm.bench.config import BenchListConfig, BenchReportConfig, BenchRunConfig

    if ns.bench_command == "workloads":
        return BenchListConfig()
    if ns.bench_command == "report":
        return BenchReportConfig(tuple(ns.records), ns.markdown, ns.img_dir, tuple(ns.baseline))
    params: dict[str, int] = {}
    for item in ns.param:
        key, sep, value = item.partition("=")
        if not sep or not value.lstrip("-").isdigit():
            raise ValueError(f"--param: expected KEY=INT, got {item!r}")
        params[key.replace("-", "_")] = int(value)
    from radixlm.bench.workloads import workload_params

    try:
        workload_params(ns.workload, params)
    except ValueError as e:
        raise ValueError(f"--workload/--param: {e}") from None
    if ns.backend != "transformers" and not ns.base_url:
        raise ValueError(f"--base-url: required for the {ns.backend} backend")
    if ns.backend == "transformers" and not ns.model:
        raise ValueError("--model: required for the transformers backend")
    if not ns.request_rate > 0:
        raise ValueError("--request-rate: must be positive (inf: all at once)")
    if ns.max_concurrency is not None and ns.max_concurrency < 1:
        raise ValueError("--max-concurrency: must be at least 1")
    return BenchRunConfig(
        backend=ns.backend, workload=ns.workload, params=params, base_url=ns.base_url,
        model=ns.model, tokenizer=ns.tokenizer, label=ns.label, request_rate=ns.request_rate,
        max_concurrency=ns.max_concurrency, seed=ns.seed, output=ns.output,
        progress=not ns.no_progress, warmup=not ns.no_warmup, dtype=ns.dtype,
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radixlm", description="radixlm LLM engine")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    sub = parser.add_subparsers(dest="command", required=True)
    add_server_args(sub.add_parser("serve", help="serve the OpenAI and SGLang HTTP APIs"))
    _add_chat_args(sub.add_parser("chat", help="chat with the model in the terminal"))
    _add_chat_args(sub.add_parser("generate", help="one-shot or interactive generation"))
    _add_bench_args(sub.add_parser("bench", help="benchmark a server: run workloads, report"))
    return parser


def chat_config_from_args(ns: argparse.Namespace) -> ChatConfig:
    """Validate parsed flags into a ChatConfig; raises ValueError naming the bad flag."""
    with _as_flag_errors():
        params = SamplingParams(
            max_new_tokens=ns.max_new_tokens,
            temperature=ns.temperature,
            top_k=ns.top_k,
            top_p=ns.top_p,
            seed=ns.seed,
        )
    load = LoadConfig(model=ns.model, dtype=ns.dtype, device=ns.device,
                      quantization=ns.quantization)  # fmt: skip
    return ChatConfig(load=load, params=params, prompt=ns.prompt, system=ns.system, raw=ns.raw)
