"""Every command-line flag of `radixlm`, in one place, turned into frozen configs."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

from radixlm.config import (
    ACTIVATION_MODES,
    QUANTIZATION_MODES,
    REASONING_PARSERS,
    TOOL_CALL_PARSERS,
    ChatConfig,
    LoadConfig,
    SchedulePolicyName,
    ServerConfig,
    build_engine_config,
)
from radixlm.loader import DEFAULT_MODEL
from radixlm.sampling.params import SamplingParams, SamplingParamsError
from radixlm.scaleout.config import POLICIES, ROUTERS, DPConfig, RouterConfig, default_router
from radixlm.server.access import (
    CACHE_REPORTS,
    COARSE_TOKENS,
    MAX_BODY_BYTES,
    AccessConfig,
    ApiKey,
    read_key_file,
)


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
    g.add_argument(
        "--activations",
        default="auto",
        choices=ACTIVATION_MODES,
        help="what int4 layers multiply in: int8 quantizes x per group of 32 inputs (each "
        "row's few outlier inputs kept in float32) and sums the products in int32 "
        "(AVX512-VNNI), ~1.3x faster prefill and faster large decode batches; bfloat16 "
        "runs int4_mm on few rows and a dense matmul on the dequantized weight past 32, a "
        "little more accurate; "
        "auto: int8 where it runs (int4 weights on such a CPU), else bfloat16 "
        "(docs/performance.md)",
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
    g.add_argument("--api-key", action="append", default=[], metavar="KEY[:TENANT]",
                   help="require 'Authorization: Bearer KEY' (repeatable); a key with a "
                   "tenant is confined to its tenant, a bare key is an admin key")  # fmt: skip
    g.add_argument("--api-key-file", default=None,
                   help="a file of KEY:TENANT lines (bare KEY: admin), # comments")  # fmt: skip
    g.add_argument("--allowed-hosts", default="",
                   help="comma-separated Host names accepted without an API key, beyond "
                   "localhost, IP literals and --host ('*': any)")  # fmt: skip
    g.add_argument("--allowed-origins", default="",
                   help="comma-separated web origins allowed cross-site (CORS); '*': any")
    g.add_argument("--cache-report", default="exact", choices=CACHE_REPORTS,
                   help="how much cached_tokens says: exact, coarse (rounded down to "
                   f"{COARSE_TOKENS}) or off (always 0)")  # fmt: skip
    g.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                   help="the largest request body, whatever the transfer encoding")
    g.add_argument("--drain-timeout", type=float, default=30.0,
                   help="seconds SIGTERM waits for requests in flight before stopping")
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
    g.add_argument("--tool-call-parser", default="auto", choices=TOOL_CALL_PARSERS,
                   help="how tool calls are read from chat output (auto: from the chat "
                   "template; hermes when it shows no tool format)")  # fmt: skip
    g.add_argument("--reasoning-parser", default=None, choices=REASONING_PARSERS,
                   help="split <think> reasoning into reasoning_content (default: off)")
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
    e.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="keep evicted prefixes on disk in DIR, reloaded on a later match "
                   "and after a restart (see docs/cache-tiers.md)")  # fmt: skip
    e.add_argument("--cache-dir-max-gb", type=float, default=10.0,
                   help="size cap of --cache-dir; least recently used entries go first")
    e.add_argument("--kv-events-config", default=None, metavar="JSON",
                   help="publish KV cache events as vLLM does, e.g. '{\"enable_kv_cache_events"
                   "\": true, \"endpoint\": \"tcp://*:5557\", \"block_size\": 16}' "
                   "(see docs/scale-out.md)")  # fmt: skip
    e.add_argument("--tp", "--tp-size", type=int, default=1, dest="tp_size",
                   help="tensor parallel ranks (torch.distributed; float32 dense only)")
    e.add_argument("--nnodes", type=int, default=1, help="hosts the --tp ranks span")
    e.add_argument("--node-rank", type=int, default=0, help="this host's index (0 serves)")
    e.add_argument("--dist-init-addr", default=None, metavar="HOST:PORT",
                   help="node 0's torch.distributed rendezvous (needed with --nnodes > 1)")
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
    _add_trace_args(p)


def _add_trace_args(p: argparse.ArgumentParser) -> None:
    t = p.add_argument_group("request trace (docs/doctor.md)")
    t.add_argument("--trace-dir", default=None,
                   help="write one JSON line per finished request here (off by default)")
    t.add_argument("--trace-hash", action="store_true",
                   help="store page hashes instead of token ids (no prompt text kept)")
    t.add_argument("--trace-page-size", type=int, default=16, help="tokens per hashed page")
    t.add_argument("--trace-max-mb", type=float, default=64.0, help="a trace file rotates here")
    t.add_argument("--trace-max-files", type=int, default=8, help="trace files kept")


def server_config_from_args(ns: argparse.Namespace) -> ServerConfig:
    """Validate parsed server flags into a ServerConfig; raises ValueError naming the flag."""
    engine: dict[str, Any] = {"model": ns.model, "dtype": ns.dtype, "device": ns.device,
                              "quantization": ns.quantization,
                              "activations": ns.activations}  # fmt: skip
    for name in ("schedule_policy", "disable_radix_cache", "cache_dir", "cache_dir_max_gb",
                 "kv_events_config", "tp_size", "nnodes", "node_rank", "dist_init_addr",
                 "grammar_backend",
                 "disable_jump_forward", "queue_timeout", "trace_dir", "trace_hash",
                 "trace_page_size", "trace_max_mb", "trace_max_files"):  # fmt: skip
        engine[name] = getattr(ns, name)
    for name in ("max_total_tokens", "mem_fraction", "chunked_prefill_size",
                 "max_prefill_tokens", "max_running_requests"):  # fmt: skip
        if getattr(ns, name) is not None:
            engine[name] = getattr(ns, name)
    with _as_flag_errors():
        return ServerConfig(
            host=ns.host,
            port=ns.port,
            access=access_config_from_args(ns),
            drain_timeout=ns.drain_timeout,
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
            tool_call_parser=ns.tool_call_parser,
            reasoning_parser=ns.reasoning_parser,
            engine=build_engine_config(**engine),
        )


def access_config_from_args(ns: argparse.Namespace) -> AccessConfig:
    """The access rules of the server flags; raises ValueError naming the flag's field."""
    keys = tuple(ApiKey.parse(k) for k in ns.api_key)
    if ns.api_key_file:
        keys += read_key_file(ns.api_key_file)
    return AccessConfig(
        api_keys=keys,
        allowed_hosts=_csv(ns.allowed_hosts),
        allowed_origins=_csv(ns.allowed_origins),
        cache_report=ns.cache_report,
        max_body_bytes=ns.max_body_bytes,
    )


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


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
    serve = sub.add_parser("serve", help="serve the OpenAI and SGLang HTTP APIs")
    add_server_args(serve)
    add_scaleout_args(serve)
    add_router_args(sub.add_parser("router", help="run smg or vllm-router in front of "
                                   "radixlm workers (docs/scale-out.md)"))  # fmt: skip
    _add_chat_args(sub.add_parser("chat", help="chat with the model in the terminal"))
    _add_chat_args(sub.add_parser("generate", help="one-shot or interactive generation"))
    _add_bench_args(sub.add_parser("bench", help="benchmark a server: run workloads, report"))
    _add_replay_args(sub.add_parser("replay", help="replay a request trace at other cache sizes"))
    _add_doctor_args(sub.add_parser("doctor", help="explain a request trace's cache hit rate"))
    return parser


def _add_replay_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace", help="a --trace-dir directory (or one trace file)")
    p.add_argument("--cache-tokens", required=True, metavar="N[,N...]",
                   help="KV pool sizes to replay at, in tokens")
    p.add_argument("--policy", default="lpm", metavar="P[,P...]",
                   help="schedule policies: lpm, fcfs, dfs-weight, lof, random")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--plot", default=None, help="write a PNG of hit rate against cache size")


def _add_doctor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace", nargs="?", default=None, help="a --trace-dir directory")
    p.add_argument("--url", default=None, help="a live server (GET /doctor on its trace)")
    p.add_argument("--api-key", default=None, help="the server's admin API key")
    p.add_argument("--limit", type=int, default=1000, help="a live server's newest records")
    p.add_argument("--tokenizer", default=None, help="for the text (default: the trace's model)")
    p.add_argument("--cache-tokens", type=int, default=None, help="default: the server's pool")
    p.add_argument("--policy", default=None, help="default: the server's")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--html", default=None, help="also write an HTML report with plots here")


def replay_config_from_args(ns: argparse.Namespace) -> Any:
    """A ReplayConfig; ValueError names the flag."""
    from radixlm.doctor.config import ReplayConfig

    try:
        sizes = tuple(int(x) for x in ns.cache_tokens.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--cache-tokens: expected N[,N...], got {ns.cache_tokens!r}") from None
    policies = tuple(p.strip() for p in ns.policy.split(",") if p.strip())
    with _as_flag_errors():
        return ReplayConfig(ns.trace, sizes, policies, ns.json, ns.plot)


def doctor_config_from_args(ns: argparse.Namespace) -> Any:
    """A DoctorConfig; ValueError names the flag."""
    from radixlm.doctor.config import DoctorConfig

    with _as_flag_errors():
        return DoctorConfig(ns.trace, ns.url, ns.api_key, ns.tokenizer, ns.cache_tokens,
                            ns.policy, ns.limit, ns.json, ns.html)  # fmt: skip


def _add_router_choice(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--router", default=None, choices=ROUTERS,
                   help="the router in front (default: smg; vllm-router for kv_aware)")
    g.add_argument("--router-policy", default="cache_aware",
                   choices=sorted({p for ps in POLICIES.values() for p in ps}),
                   help="the router's --policy (kv_aware: vllm-router on the workers' KV events)")
    g.add_argument("--router-arg", action="append", default=[], metavar="ARG",
                   help="passed to the router as is (repeatable; write it with '=', e.g. "
                   "--router-arg=--cache-threshold --router-arg=0.5)")  # fmt: skip


def add_scaleout_args(p: argparse.ArgumentParser) -> None:
    """`radixlm serve --dp N`: N workers behind a router (see `radixlm.scaleout`)."""
    g = p.add_argument_group("data parallel (N workers behind a router at --host:--port)")
    g.add_argument("--dp", "--dp-size", type=int, default=1, dest="dp",
                   help="engine workers, each with its own cores, port and radix cache")
    _add_router_choice(g)
    g.add_argument("--worker-base-port", type=int, default=None,
                   help="worker i listens on 127.0.0.1:(this + i) (default: --port + 1)")
    g.add_argument("--kv-events", action="store_true",
                   help="workers publish KV events (always on with kv_aware)")
    g.add_argument("--kv-events-base-port", type=int, default=None,
                   help="worker i publishes on tcp://127.0.0.1:(this + i) (default: --port + 101)")
    g.add_argument("--no-worker-restart", action="store_true",
                   help="leave a worker that dies down (default: start it again)")


# Flags of `serve` that belong to the launch, never to a worker (with how many values).
_SCALEOUT_FLAGS = {"--dp": 1, "--dp-size": 1, "--router": 1, "--router-policy": 1,
                   "--router-arg": 1, "--worker-base-port": 1, "--kv-events": 0,
                   "--kv-events-base-port": 1, "--no-worker-restart": 0}  # fmt: skip


def worker_argv(serve_argv: list[str]) -> tuple[str, ...]:
    """The `serve` flags without the scale-out ones: what every worker is started with."""
    out, i = [], 0
    while i < len(serve_argv):
        flag, eq, _ = serve_argv[i].partition("=")
        if flag in _SCALEOUT_FLAGS:
            i += 1 if eq else 1 + _SCALEOUT_FLAGS[flag]
            continue
        out.append(serve_argv[i])
        i += 1
    return tuple(out)


def dp_config_from_args(ns: argparse.Namespace, serve_argv: list[str]) -> DPConfig:
    """The DP launch of `radixlm serve --dp N` flags; raises ValueError naming the flag."""
    import os

    with _as_flag_errors():
        return DPConfig(
            dp=ns.dp, worker_argv=worker_argv(serve_argv),
            router=ns.router or default_router(ns.router_policy), policy=ns.router_policy,
            host=ns.host, port=ns.port,
            worker_base_port=ns.worker_base_port or ns.port + 1,
            kv_events=ns.kv_events, kv_events_base_port=ns.kv_events_base_port or ns.port + 101,
            cpus=tuple(sorted(os.sched_getaffinity(0))), restart_workers=not ns.no_worker_restart,
            router_args=tuple(ns.router_arg), log_level=getattr(ns, "log_level", "warning"),
        )  # fmt: skip


def add_router_args(p: argparse.ArgumentParser) -> None:
    """`radixlm router --worker-urls ...`: a router in front of workers on other hosts."""
    g = p.add_argument_group("router")
    g.add_argument("--worker-urls", nargs="+", required=True, metavar="URL")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, default=30000)
    _add_router_choice(g)
    g.add_argument("--kv-event-source", action="append", default=[], metavar="URL=ENDPOINT",
                   help="a worker's KV events (its --kv-events-config endpoint), for kv_aware")
    g.add_argument("--tokenizer", default=None,
                   help="tokenizer directory for kv_aware (default: the first worker's)")


def router_config_from_args(ns: argparse.Namespace) -> RouterConfig:
    """The router of `radixlm router` flags; raises ValueError naming the flag."""
    sources = []
    for item in ns.kv_event_source:
        url, sep, endpoint = item.partition("=")
        if not sep:
            raise ValueError(f"--kv-event-source: {item!r} is not URL=ENDPOINT")
        sources.append((url, endpoint))
    with _as_flag_errors():
        return RouterConfig(
            worker_urls=tuple(ns.worker_urls), router=ns.router or default_router(ns.router_policy),
            policy=ns.router_policy, host=ns.host, port=ns.port,
            kv_event_sources=tuple(sources), tokenizer=ns.tokenizer,
            log_level=getattr(ns, "log_level", "warning"), extra_args=tuple(ns.router_arg),
        )  # fmt: skip


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
                      quantization=ns.quantization, activations=ns.activations)  # fmt: skip
    return ChatConfig(load=load, params=params, prompt=ns.prompt, system=ns.system, raw=ns.raw)
