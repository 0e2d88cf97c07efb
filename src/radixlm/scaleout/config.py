"""Frozen settings of a data-parallel launch and of a router in front of workers."""

from __future__ import annotations

from dataclasses import dataclass

ROUTERS = ("smg", "vllm-router")
# The policies each router takes (its --policy choices); kv_aware reads KV events.
POLICIES = {
    "smg": ("cache_aware", "round_robin", "random", "power_of_two", "least_load",
            "consistent_hashing", "prefix_hash", "manual"),
    "vllm-router": ("cache_aware", "kv_aware", "round_robin", "random", "power_of_two",
                    "consistent_hash", "sticky_least_loaded"),
}  # fmt: skip
KV_BLOCK_SIZE = 16  # tokens per KV-event block: vllm-router's default --kv-event-block-size


def default_router(policy: str) -> str:
    """smg, unless only vllm-router has `policy` (kv_aware)."""
    return "smg" if policy in POLICIES["smg"] else "vllm-router"


@dataclass(frozen=True)
class RouterConfig:
    """A router process in front of `worker_urls`.

    `kv_event_sources` maps a worker URL to the ZeroMQ endpoint of its KV events (only
    vllm-router reads them, with policy kv_aware); `tokenizer` is the directory the
    router tokenizes prompts with to match blocks, `model` the workers' model id. Both
    are read from the first worker when unset. `extra_args` pass through verbatim.
    """

    worker_urls: tuple[str, ...]
    router: str = "smg"
    policy: str = "cache_aware"
    host: str = "127.0.0.1"
    port: int = 30000
    kv_event_sources: tuple[tuple[str, str], ...] = ()
    kv_block_size: int = KV_BLOCK_SIZE
    tokenizer: str | None = None
    model: str | None = None  # the workers' model id (vllm-router's --kv-event-model)
    prometheus_port: int | None = None  # the router's metrics port; None: port + 200
    log_level: str = "warning"
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.router not in ROUTERS:
            raise ValueError(f"router: {self.router!r} is not one of {list(ROUTERS)}")
        if self.policy not in POLICIES[self.router]:
            raise ValueError(f"router_policy: {self.router} has no policy {self.policy!r} "
                             f"(it has {list(POLICIES[self.router])})")  # fmt: skip
        if not self.worker_urls:
            raise ValueError("worker_urls: give at least one worker URL")
        for url in self.worker_urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"worker_urls: {url!r} is not an http(s) URL")
        if self.policy == "kv_aware" and not self.kv_event_sources:
            raise ValueError("kv_event_source: the kv_aware policy needs each worker's KV events")
        if not 0 < self.port < 65536:
            raise ValueError(f"port: {self.port} is not a TCP port")

    @property
    def metrics_port(self) -> int:
        """Where the router serves Prometheus metrics (two routers must not share one)."""
        return self.prometheus_port or (self.port + 200) % 65536 or 1


@dataclass(frozen=True)
class DPConfig:
    """`radixlm serve --dp N`: N workers on loopback ports, a router on `host:port`.

    Worker i listens on 127.0.0.1:`worker_base_port + i` and, with KV events, publishes
    them on tcp://127.0.0.1:`kv_events_base_port + i`. `cpus` are split evenly between
    the workers (each pinned to its share, with that many threads).
    """

    dp: int
    worker_argv: tuple[str, ...]  # `radixlm serve` flags every worker gets
    router: str = "smg"
    policy: str = "cache_aware"
    host: str = "127.0.0.1"
    port: int = 30000
    worker_base_port: int = 31000
    kv_events: bool = False  # publish KV events (always on for kv_aware)
    kv_events_base_port: int = 32000
    cpus: tuple[int, ...] = ()
    restart_workers: bool = True  # start a worker again when it dies
    router_args: tuple[str, ...] = ()
    log_level: str = "warning"

    def __post_init__(self) -> None:
        if self.dp < 1:
            raise ValueError("dp: must be at least 1")
        if self.cpus and len(self.cpus) < self.dp:
            raise ValueError(f"dp: {self.dp} workers but only {len(self.cpus)} CPUs to pin them to")
        if self.policy not in POLICIES.get(self.router, ()):
            raise ValueError(f"router_policy: {self.router} has no policy {self.policy!r}")

    @property
    def with_kv_events(self) -> bool:
        return self.kv_events or self.policy == "kv_aware"

    def worker_port(self, i: int) -> int:
        return self.worker_base_port + i

    def kv_events_endpoint(self, i: int) -> str:
        return f"tcp://127.0.0.1:{self.kv_events_base_port + i}"

    def cpu_share(self, i: int) -> tuple[int, ...]:
        """Worker i's CPUs: an even, contiguous share (the remainder goes to the first ones)."""
        if not self.cpus:
            return ()
        per, extra = divmod(len(self.cpus), self.dp)
        start = i * per + min(i, extra)
        return self.cpus[start : start + per + (1 if i < extra else 0)]
