"""The claims the committed results check: ratios between systems measured in one run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    """`system`'s `metric` on `workload` is at least `at_least` (x `baseline`'s, when set).

    metric "throughput" is total token throughput; "hit/oracle" is the measured hit rate
    over the oracle hit rate.
    """

    workload: str
    system: str
    metric: str
    at_least: float
    baseline: str | None = None

    def describe(self) -> str:
        if self.baseline is None:
            return f"{self.workload}: {self.system} {self.metric} >= {self.at_least:.0%}"
        return (f"{self.workload}: {self.system} {self.metric} >= "
                f"{self.at_least:g}x {self.baseline}")  # fmt: skip


TARGETS = (
    Target("shared-prefix", "radixlm lpm", "throughput", 4.0, "radixlm radix-off"),
    Target("shared-prefix", "radixlm lpm", "throughput", 10.0, "transformers"),
    Target("shared-prefix", "radixlm lpm", "hit/oracle", 0.95),
    Target("unique", "radixlm lpm", "throughput", 0.97, "radixlm radix-off"),
)


def _value(summary: Mapping[str, Any], metric: str) -> float | None:
    return summary["total_throughput"] if metric == "throughput" else summary["hit_vs_oracle"]


def check(target: Target, summaries: Mapping[tuple[str, str], Mapping[str, Any]]) -> str | None:
    """A markdown line saying the measured value and whether `target` is met.

    `summaries` maps (workload, system label) to a record's summary; None when a record
    the target needs is missing.
    """
    mine = summaries.get((target.workload, target.system))
    if mine is None or (value := _value(mine, target.metric)) is None:
        return None
    shown = f"{value:.1%}"
    if target.baseline is not None:
        base = summaries.get((target.workload, target.baseline))
        if base is None or not (ref := _value(base, target.metric)):
            return None
        value /= ref
        shown = f"{value:.2f}x"
    verdict = "met" if value >= target.at_least else "**missed**"
    return f"- {target.describe()}: {shown} — {verdict}"
