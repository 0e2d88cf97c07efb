"""Frozen configs of `radixlm replay` and `radixlm doctor` (the flags are in `radixlm.args`)."""

from __future__ import annotations

from dataclasses import dataclass

from radixlm.config import SchedulePolicyName


def _check_policies(policies: tuple[str, ...]) -> None:
    names = {p.value for p in SchedulePolicyName}
    for p in policies:
        if p not in names:
            choices = ", ".join(sorted(names))
            raise ValueError(f"policy: unknown policy {p!r}; choose from {choices}")


@dataclass(frozen=True)
class ReplayConfig:
    """Replay `trace` at each of `cache_tokens` under each of `policies`."""

    trace: str
    cache_tokens: tuple[int, ...]
    policies: tuple[str, ...] = ("lpm",)
    json: bool = False
    plot: str | None = None  # a PNG of hit rate against cache size

    def __post_init__(self) -> None:
        if not self.cache_tokens:
            raise ValueError("cache_tokens: give at least one size")
        if any(n < 16 for n in self.cache_tokens):
            raise ValueError("cache_tokens: every size must be at least 16 tokens")
        _check_policies(self.policies)


@dataclass(frozen=True)
class DoctorConfig:
    """Diagnose the trace in `trace` (a directory), or a live server's at `url`."""

    trace: str | None = None
    url: str | None = None
    api_key: str | None = None
    tokenizer: str | None = None  # for the text (default: the model named in the trace)
    cache_tokens: int | None = None  # default: the server's pool
    policy: str | None = None  # default: the server's
    limit: int = 1000  # a live server's newest records
    json: bool = False
    html: str | None = None  # write the HTML report here

    def __post_init__(self) -> None:
        if (self.trace is None) == (self.url is None):
            raise ValueError("trace: give a trace directory or --url, not both")
        if self.cache_tokens is not None and self.cache_tokens < 16:
            raise ValueError("cache_tokens: must be at least 16")
        if self.policy is not None:
            _check_policies((self.policy,))
        if self.limit < 2:
            raise ValueError("limit: must be at least 2")
