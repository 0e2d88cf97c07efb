"""The engine's frozen configuration, built from flat keyword options."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from radixlm.config import CacheConfig, LoadConfig, SchedulerConfig


@dataclass(frozen=True)
class EngineConfig:
    load: LoadConfig = field(default_factory=LoadConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    skip_tokenizer_init: bool = False  # token ids in and out only; no text, no stop strings
    queue_timeout: float | None = None  # seconds a request may wait, never admitted

    def __post_init__(self) -> None:
        if self.queue_timeout is not None and not self.queue_timeout > 0:
            raise ValueError("queue_timeout: must be > 0 seconds")


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def build_engine_config(**options: Any) -> EngineConfig:
    """Sort flat options (model=..., max_total_tokens=..., schedule_policy=...) into sections.

    Raises TypeError naming any option no section knows.
    """
    sections: dict[str, dict[str, Any]] = {"load": {}, "cache": {}, "scheduler": {}}
    top: dict[str, Any] = {}
    owners = {"load": LoadConfig, "cache": CacheConfig, "scheduler": SchedulerConfig}
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
        **top,
    )
