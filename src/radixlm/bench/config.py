"""Frozen configurations of `radixlm bench run`, `bench report` and `bench workloads`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

BACKENDS = ("native", "openai", "openai-chat", "transformers")


@dataclass(frozen=True)
class BenchRunConfig:
    """One benchmark run: a workload sent to one system, written as one JSON record.

    `request_rate` is requests per second of open-loop Poisson arrivals (inf: all at
    once); `max_concurrency` caps requests in flight (None: no cap). `base_url` is
    required for the HTTP backends; `model` names the model in OpenAI requests (HTTP) or
    is the checkpoint to load (transformers); `tokenizer` is a HF dir, a .gguf file or a
    model name (default: `model`, else what the server's /get_model_info names).
    """

    backend: str
    workload: str
    params: dict[str, int] = field(default_factory=dict)  # overrides of workload defaults
    base_url: str | None = None
    model: str | None = None
    tokenizer: str | None = None
    label: str | None = None  # the system's name in reports (default: the backend)
    request_rate: float = math.inf
    max_concurrency: int | None = None
    seed: int = 0
    output: str | None = None  # where the JSON record goes (default: print only)
    progress: bool = True
    warmup: bool = True  # one short request first, then flush the cache when the server can
    dtype: str = "float32"  # transformers backend only


@dataclass(frozen=True)
class BenchReportConfig:
    """Records -> a markdown table (into `markdown`, between markers when present) and PNGs."""

    records: tuple[str, ...]
    markdown: str | None = None
    img_dir: str | None = None
    baselines: tuple[str, ...] = ()  # labels every system's throughput is compared with


@dataclass(frozen=True)
class BenchListConfig:
    """List the workloads and their parameters."""
