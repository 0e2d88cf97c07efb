"""Frozen configuration objects. Nothing mutates a config after start-up.

`ModelConfig` is the one description of a Llama-family decoder that every
loader (Hugging Face directory, GGUF file) produces and the model consumes.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass, field
from typing import Any

import torch

from radixlm.cpu import native_bf16_flag
from radixlm.sampling.params import SamplingParams
from radixlm.server.access import AccessConfig

# Decoder families (models/registry.py holds each one's delta on the shared decoder).
SUPPORTED_ARCHITECTURES = (
    "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3",
    "mixtral", "qwen2_moe", "qwen3_moe",
)  # fmt: skip
QUANTIZATION_MODES = ("auto", "none", "int8", "int4")  # --quantization
ACTIVATION_MODES = ("auto", "bfloat16", "int8")  # --activations

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map "float32" / "bfloat16" / "float16" (or a torch dtype) to a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unsupported dtype {name!r}; choose one of {sorted(_DTYPES)}") from None


@dataclass(frozen=True)
class RopeScaling:
    """Rotary-embedding frequency scaling. `kind` is "linear", "llama3" or "longrope"."""

    kind: str
    factor: float = 1.0
    # llama3 only: the band of wavelengths that is smoothly interpolated.
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    # longrope only: per-frequency divisors for sequences up to / beyond the original
    # context, and the cos/sin multiplier (None: derived from the context ratio).
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()
    attention_factor: float | None = None

    @classmethod
    def from_hf(cls, d: dict[str, Any] | None) -> RopeScaling | None:
        """Parse a HF `rope_scaling` dict; None (or "default") means no scaling."""
        if not d:
            return None
        kind = d.get("rope_type", d.get("type", "default"))
        if kind == "default":
            return None
        if kind == "linear":
            return cls(kind="linear", factor=float(d["factor"]))
        if kind == "llama3":
            return cls(
                kind="llama3",
                factor=float(d["factor"]),
                low_freq_factor=float(d.get("low_freq_factor", 1.0)),
                high_freq_factor=float(d.get("high_freq_factor", 4.0)),
                original_max_position_embeddings=int(
                    d.get("original_max_position_embeddings", 8192)
                ),
            )
        if kind in ("longrope", "su"):
            return cls(
                kind="longrope",
                short_factor=tuple(float(f) for f in d["short_factor"]),
                long_factor=tuple(float(f) for f in d["long_factor"]),
                attention_factor=d.get("attention_factor"),
                original_max_position_embeddings=int(
                    d.get("original_max_position_embeddings", 4096)
                ),
            )
        raise ValueError(
            f"unsupported rope_scaling type {kind!r} (supported: linear, llama3, longrope)"
        )


@dataclass(frozen=True)
class MoEConfig:
    """Mixture-of-experts MLPs: each token runs `top_k` of `num_experts` expert MLPs."""

    num_experts: int
    top_k: int
    intermediate_size: int  # of one expert
    norm_topk_prob: bool = True  # renormalise the top-k router probabilities to sum 1
    shared_intermediate_size: int = 0  # a shared expert every token runs (Qwen2-MoE); 0 = none
    dense_layers: tuple[int, ...] = ()  # layers with a plain MLP instead

    def __post_init__(self) -> None:
        if not 0 < self.top_k <= self.num_experts:
            raise ValueError(f"moe: top_k {self.top_k} must be in [1, {self.num_experts}]")


@dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM2)."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q/k/v projections (Qwen2)
    sliding_window: int | None = None  # W of the sliding layers: a token sees the last W
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    name: str = ""
    # Family deltas on the shared decoder (models/registry.py); the defaults are Llama's.
    layer_types: tuple[str, ...] = ()  # "full"/"sliding" per layer; () = all sliding if W set
    qk_norm: bool = False  # RMSNorm over each q and k head before rotary (Qwen3, Gemma 3)
    norm_offset: float = 0.0  # checkpoint norms scale by (offset + weight) (Gemma: 1)
    embed_scale: float = 1.0  # embeddings are multiplied by this (Gemma: sqrt(hidden))
    hidden_act: str = "silu"  # MLP gate activation: "silu" or "gelu_tanh"
    sandwich_norms: bool = False  # norms after attention and around the MLP (Gemma 2/3)
    query_pre_attn_scalar: float | None = None  # attention scale = its ** -0.5
    attn_logit_softcap: float | None = None  # scores -> cap * tanh(scores / cap)
    final_logit_softcap: float | None = None
    rope_local_theta: float | None = None  # unscaled rope base of sliding layers (Gemma 3)
    moe: MoEConfig | None = None  # mixture-of-experts MLPs (Mixtral, Qwen2/3-MoE)

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {self.architecture!r}; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if self.layer_types and len(self.layer_types) != self.num_layers:
            n = len(self.layer_types)
            raise ValueError(f"layer_types lists {n} of {self.num_layers} layers")
        if set(self.layer_types) - {"full", "sliding"}:
            raise ValueError(f"layer_types must be 'full' or 'sliding', got {self.layer_types}")
        if self.hidden_act not in ("silu", "gelu_tanh"):
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r} (silu, gelu_tanh)")

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of layer `layer`, or None for a full-attention layer (also
        when the window spans the whole context, as Phi-3.5's does)."""
        if not self.sliding_window or self.sliding_window >= self.max_position_embeddings:
            return None
        if self.layer_types and self.layer_types[layer] != "sliding":
            return None
        return self.sliding_window

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def context_length(self) -> int:
        """Longest sequence (prompt + output) the model may run."""
        return self.max_position_embeddings

    @classmethod
    def from_hf(
        cls, cfg: dict[str, Any], generation_config: dict[str, Any] | None = None
    ) -> ModelConfig:
        """Build from a HF `config.json` dict (and optionally `generation_config.json`).

        Each family's fields are read by `models.registry`; an unsupported
        `model_type` raises ValueError listing the supported ones.
        """
        from radixlm.models.registry import config_from_hf  # imports torch modules lazily

        return config_from_hf(cfg, generation_config)


@dataclass(frozen=True)
class LoadConfig:
    """How to load a model: where from, in which dtype, onto which device."""

    model: str = "smollm2-135m-instruct"
    dtype: str = "auto"  # see `dtype_choice`
    device: str = "auto"  # "auto" = cuda when available, else cpu
    tokenizer: str | None = None  # a HF directory; default: the model's own
    quantization: str = "auto"  # one of QUANTIZATION_MODES; see loader.quantize
    activations: str = "auto"  # one of ACTIVATION_MODES; see loader.quantize
    # tensor parallelism (radixlm.distributed): tp_size ranks over nnodes hosts, rank 0 on
    # node 0 schedules; dist_init_addr "host:port" is rank 0's rendezvous (default: loopback)
    tp_size: int = 1
    nnodes: int = 1
    node_rank: int = 0
    dist_init_addr: str | None = None

    def __post_init__(self) -> None:
        if self.tp_size < 1 or self.nnodes < 1 or self.tp_size % self.nnodes:
            raise ValueError("tp_size: must be >= 1 and a multiple of nnodes")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError("node_rank: must be in 0..nnodes-1")
        if self.nnodes > 1 and not self.dist_init_addr:
            raise ValueError("dist_init_addr: required with nnodes > 1 (host:port of node 0)")
        if self.quantization not in QUANTIZATION_MODES:
            raise ValueError(
                f"quantization: unknown mode {self.quantization!r}; "
                f"choose one of {', '.join(QUANTIZATION_MODES)}"
            )
        if self.activations not in ACTIVATION_MODES:
            raise ValueError(
                f"activations: unknown mode {self.activations!r}; "
                f"choose one of {', '.join(ACTIVATION_MODES)}"
            )

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_dtype(self) -> torch.dtype:
        return self.dtype_choice()[0]

    def dtype_choice(self) -> tuple[torch.dtype, str]:
        """(compute and KV dtype, why it was chosen) for this config on this machine.

        "auto" is bfloat16 on CUDA and on CPUs with native bf16 arithmetic
        (AMX-BF16 or AVX512-BF16 in the CPU flags), float32 elsewhere.
        float32 is the exact mode.
        """
        if self.dtype != "auto":
            return parse_dtype(self.dtype), "as asked"
        if self.resolved_device().type == "cuda":
            return torch.bfloat16, "auto: CUDA device"
        flag = native_bf16_flag()
        if flag is not None:
            return torch.bfloat16, f"auto: the CPU has {flag}"
        return torch.float32, "auto: the CPU has no native bf16 (AMX-BF16 / AVX512-BF16)"


@dataclass(frozen=True)
class KVEventsConfig:
    """KV cache events (`kvcache.events`): vLLM's `--kv-events-config` fields, plus `block_size`.

    Events go out as msgpack batches on a ZeroMQ PUB socket bound at `endpoint`; with
    `replay_endpoint`, a ROUTER socket there resends the last `buffer_steps` batches.
    `block_size` is the tokens per published block (the router's block size);
    `encoding` how each event is packed ("map": tagged by `type`, "array": positional).
    """

    enable_kv_cache_events: bool = False
    publisher: str = "zmq"  # "zmq", or "null" (events are tracked but not sent)
    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000
    hwm: int = 100_000
    max_queue_size: int = 100_000
    topic: str = ""
    block_size: int = 16
    encoding: str = "map"  # events as maps tagged by "type", or "array" (positional)

    def __post_init__(self) -> None:
        if self.encoding not in ("map", "array"):
            raise ValueError(f"kv_events_config.encoding: {self.encoding!r} is not map or array")
        if self.publisher not in ("zmq", "null"):
            raise ValueError(f"kv_events_config.publisher: {self.publisher!r} is not zmq or null")
        for name in ("buffer_steps", "hwm", "max_queue_size", "block_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"kv_events_config.{name}: must be a positive integer")

    @classmethod
    def from_json(cls, text: str) -> KVEventsConfig:
        """Parse a JSON object of these fields; raises ValueError naming a bad or unknown one."""
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"kv_events_config: not JSON ({e})") from None
        if not isinstance(obj, dict):
            raise ValueError("kv_events_config: must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ValueError(f"kv_events_config: unknown field(s) {unknown}")
        return cls(**obj)


@dataclass(frozen=True)
class CacheConfig:
    """The KV pool's size and the prefix cache's mode."""

    max_total_tokens: int | None = None  # None: sized from mem_fraction
    mem_fraction: float = 0.3  # share of free memory (after weights) given to the KV pool
    page_size: int = 1
    disable_radix_cache: bool = False
    debug: bool = False  # check every free against an allocation mask, track slot writes (slow)
    cache_dir: str | None = None  # a disk tier under the pool (kvcache.tiers); None: off
    cache_dir_max_gb: float = 10.0  # the disk tier's size cap; least recently used goes first
    kv_events_config: str | None = None  # JSON of KVEventsConfig fields; None: no KV events

    def __post_init__(self) -> None:
        if self.kv_events_config is not None:
            KVEventsConfig.from_json(self.kv_events_config)  # raises ValueError naming the field
        if self.max_total_tokens is not None and self.max_total_tokens < 16:
            raise ValueError("max_total_tokens: must be at least 16")
        if not 0 < self.mem_fraction < 1:
            raise ValueError("mem_fraction: must be in (0, 1)")
        if not self.cache_dir_max_gb > 0:
            raise ValueError("cache_dir_max_gb: must be > 0")
        if self.cache_dir is not None and self.disable_radix_cache:
            raise ValueError("cache_dir: needs the radix cache (drop --disable-radix-cache)")


class SchedulePolicyName(enum.StrEnum):
    """How the waiting queue is ordered (see `scheduler.policy`)."""

    LPM = "lpm"  # longest cached prefix first
    DFS_WEIGHT = "dfs-weight"  # depth-first over the tree, heavier subtrees first
    FCFS = "fcfs"  # arrival order
    LOF = "lof"  # longest output first
    RANDOM = "random"


@dataclass(frozen=True)
class SchedulerConfig:
    """How the scheduler orders, admits and batches requests."""

    schedule_policy: SchedulePolicyName = SchedulePolicyName.LPM  # a name is accepted too
    max_running_requests: int = 256
    max_prefill_tokens: int = 8192  # prompt tokens per prefill step
    chunked_prefill_size: int = 2048  # longer prompts are prefilled in chunks; <= 0 disables
    fcfs_fallback_queue_len: int = 128  # cache-aware policies act as fcfs past this queue length
    in_batch_prefix_threshold: int = 32  # hold back siblings sharing this many uncached tokens
    init_new_token_ratio: float = 0.7  # share of max_new_tokens reserved per running request
    min_new_token_ratio: float = 0.1
    new_token_ratio_decay: float = 0.001  # per decode step
    seed: int = 0  # for the random policy
    grammar_backend: str = "xgrammar"  # constrained decoding library; "none" turns it off
    disable_jump_forward: bool = False  # decode a grammar's forced text token by token

    def __post_init__(self) -> None:
        try:
            policy = SchedulePolicyName(self.schedule_policy)
        except ValueError:
            names = ", ".join(p.value for p in SchedulePolicyName)
            raise ValueError(
                f"schedule_policy: unknown policy {self.schedule_policy!r}; choose one of {names}"
            ) from None
        object.__setattr__(self, "schedule_policy", policy)
        if self.max_running_requests < 1:
            raise ValueError("max_running_requests: must be at least 1")


@dataclass(frozen=True)
class ChatConfig:
    """A terminal chat or a one-shot generation (`radixlm chat | generate`) on an Engine."""

    load: LoadConfig
    params: SamplingParams
    prompt: str | None = None  # one-shot when set
    system: str | None = None
    raw: bool = False  # send the prompt as plain text, without the chat template

    def engine_options(self) -> dict[str, Any]:
        """The `radixlm.Engine` keyword options of this chat."""
        load = self.load
        return {"model": load.model, "dtype": load.dtype, "device": load.device,
                "quantization": load.quantization, "activations": load.activations}  # fmt: skip


@dataclass(frozen=True)
class TraceConfig:
    """The request trace (`radixlm.trace`): off unless `trace_dir` is set."""

    trace_dir: str | None = None  # one JSON line per finished request, in files here
    trace_hash: bool = False  # store page hashes instead of token ids (no prompt text)
    trace_page_size: int = 16  # tokens per hashed page
    trace_max_mb: float = 64.0  # a file rotates past this size
    trace_max_files: int = 8  # the newest files kept

    def __post_init__(self) -> None:
        if self.trace_page_size < 1:
            raise ValueError("trace_page_size: must be at least 1")
        if not self.trace_max_mb >= 0.001:
            raise ValueError("trace_max_mb: must be at least 0.001 (1 KiB)")
        if self.trace_max_files < 1:
            raise ValueError("trace_max_files: must be at least 1")


@dataclass(frozen=True)
class EngineConfig:
    """Everything an engine is built from: the model, the KV cache, the scheduler."""

    load: LoadConfig = field(default_factory=LoadConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)
    skip_tokenizer_init: bool = False  # token ids in and out only; no text, no stop strings
    queue_timeout: float | None = None  # seconds a request may wait, never admitted

    def __post_init__(self) -> None:
        if self.queue_timeout is not None and not self.queue_timeout > 0:
            raise ValueError("queue_timeout: must be > 0 seconds")

    def options(self) -> dict[str, Any]:
        """Every field as one flat dict (what `build_engine_config` takes), enums as values."""
        flat: dict[str, Any] = {}
        for section in (self.load, self.cache, self.scheduler, self.trace):
            flat |= dataclasses.asdict(section)
        flat |= {"skip_tokenizer_init": self.skip_tokenizer_init,
                 "queue_timeout": self.queue_timeout}  # fmt: skip
        return {k: v.value if isinstance(v, enum.Enum) else v for k, v in flat.items()}


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def build_engine_config(**options: Any) -> EngineConfig:
    """Sort flat options (model=..., max_total_tokens=..., schedule_policy=...) into sections.

    Raises TypeError naming any option no section knows.
    """
    sections: dict[str, dict[str, Any]] = {"load": {}, "cache": {}, "scheduler": {}, "trace": {}}
    top: dict[str, Any] = {}
    owners = {"load": LoadConfig, "cache": CacheConfig, "scheduler": SchedulerConfig,
              "trace": TraceConfig}  # fmt: skip
    for key, value in options.items():
        for name, cls in owners.items():
            if key in _field_names(cls):
                sections[name][key] = value
                break
        else:
            if key in ("skip_tokenizer_init", "queue_timeout"):
                top[key] = value
            else:
                raise TypeError(f"unknown engine option {key!r}")
    return EngineConfig(
        load=LoadConfig(**sections["load"]),
        cache=CacheConfig(**sections["cache"]),
        scheduler=SchedulerConfig(**sections["scheduler"]),
        trace=TraceConfig(**sections["trace"]),
        **top,
    )


TOOL_CALL_PARSERS = ("auto", "hermes", "qwen", "llama3", "mistral", "pythonic")
REASONING_PARSERS = ("deepseek-r1", "qwen3")


@dataclass(frozen=True)
class ServerConfig:
    """An HTTP server (OpenAI and SGLang APIs) in front of an engine process."""

    host: str = "127.0.0.1"
    port: int = 30000
    access: AccessConfig = field(default_factory=AccessConfig)  # keys, tenants, Host/Origin
    served_model_name: str | None = None  # default: the --model value
    log_level: str = "info"
    disable_request_log: bool = False
    max_n: int = 16  # the most samples (n) one request may ask for
    max_prompts_per_request: int = 256  # prompts x n of one API call
    max_top_logprobs: int = 20  # top_logprobs_num on /generate (OpenAI caps it at 20 too)
    max_queued_requests: int = 1024  # waiting beyond the running ones; then 429
    default_max_tokens: int = 2048  # a chat request without max_tokens (capped by the context)
    drain_timeout: float = 30.0  # seconds SIGTERM waits for requests in flight
    engine_restart: bool = True  # start a new engine when it dies (else the server exits)
    max_engine_restarts: int = 3  # then the server exits non-zero
    tool_call_parser: str = "auto"  # how tool calls are read (auto: from the chat template)
    reasoning_parser: str | None = None  # <think> splitting (deepseek-r1, qwen3); None: off
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError("port: must be in 1..65535")
        for name in ("max_n", "max_prompts_per_request", "default_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")
        for name in ("max_top_logprobs", "max_queued_requests"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0")
        if self.max_engine_restarts < 0:
            raise ValueError("max_engine_restarts: must be >= 0")
        if self.tool_call_parser not in TOOL_CALL_PARSERS:
            raise ValueError(f"tool_call_parser: choose from {', '.join(TOOL_CALL_PARSERS)}")
        if self.reasoning_parser not in (None, *REASONING_PARSERS):
            raise ValueError(f"reasoning_parser: choose from {', '.join(REASONING_PARSERS)}")
        if not self.drain_timeout >= 0:
            raise ValueError("drain_timeout: must be >= 0 seconds")
