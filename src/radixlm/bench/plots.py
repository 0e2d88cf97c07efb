"""PNG plots of a set of records (matplotlib, no display needed).

Every function takes `rows`: (workload, system label, record) in report order, and
writes one file; it returns the path written, or None when there was nothing to plot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

Row = tuple[str, str, dict[str, Any]]


def _order(rows: Sequence[Row]) -> tuple[list[str], list[str]]:
    workloads = list(dict.fromkeys(w for w, _, _ in rows))
    systems = list(dict.fromkeys(s for _, s, _ in rows))
    return workloads, systems


def _grouped_bars(ax: Any, rows: Sequence[Row], value: Callable[[dict], float | None]) -> None:
    """One group of bars per workload, one bar per system (missing values left out)."""
    workloads, systems = _order(rows)
    by_key = {(w, s): rec for w, s, rec in rows}
    width = 0.8 / max(1, len(systems))
    x = np.arange(len(workloads))
    for j, system in enumerate(systems):
        vals = [value(by_key[(w, system)]["summary"]) if (w, system) in by_key else None
                for w in workloads]  # fmt: skip
        heights = [np.nan if v is None else v for v in vals]
        ax.bar(x + (j - (len(systems) - 1) / 2) * width, heights, width, label=system)
    ax.set_xticks(x, workloads, rotation=20, ha="right")
    ax.grid(axis="y", alpha=0.3)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput(rows: Sequence[Row], path: Path) -> Path | None:
    """Total token throughput (input + output tokens per second) per system per workload."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    _grouped_bars(ax, rows, lambda s: s["total_throughput"])
    ax.set_yscale("log")
    ax.set_ylabel("tokens / s (input + output), log")
    ax.set_title("Throughput")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_ttft(rows: Sequence[Row], path: Path) -> Path | None:
    """p50 and p99 time to first token per system per workload."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, p in zip(axes, ("p50", "p99"), strict=True):
        _grouped_bars(ax, rows, lambda s, p=p: s["ttft_s"][p])
        ax.set_yscale("log")
        ax.set_ylabel("seconds, log")
        ax.set_title(f"TTFT {p}")
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def plot_hit_rate(rows: Sequence[Row], path: Path) -> Path | None:
    """Measured hit rate per system beside each workload's oracle hit rate (black ticks)."""
    hit_rows = [r for r in rows if r[2]["summary"]["hit_rate"] is not None]
    if not hit_rows:
        return None
    fig, ax = plt.subplots(figsize=(9, 4.5))
    _grouped_bars(ax, hit_rows, lambda s: s["hit_rate"])
    workloads, _ = _order(hit_rows)
    oracle = {w: rec["summary"]["oracle_hit_rate"] for w, _, rec in hit_rows}
    ax.hlines([oracle[w] for w in workloads], np.arange(len(workloads)) - 0.45,
              np.arange(len(workloads)) + 0.45, colors="black", label="oracle")  # fmt: skip
    ax.set_ylim(0, 1)
    ax.set_ylabel("cached / prompt tokens")
    ax.set_title("Cache hit rate vs the oracle")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _medians(x: np.ndarray, y: np.ndarray) -> list[tuple[float, float]]:
    """Median y per distinct x (per x-quantile bin when x has more than 20 values)."""
    if len(np.unique(x)) <= 20:
        return [(v, float(np.median(y[x == v]))) for v in np.unique(x)]
    edges = np.unique(np.quantile(x, np.linspace(0, 1, 11)))
    which = np.clip(np.digitize(x, edges[1:-1]), 0, len(edges) - 2)
    return [(float(x[which == b].mean()), float(np.median(y[which == b])))
            for b in range(len(edges) - 1) if (which == b).any()]  # fmt: skip


def plot_ttft_vs_cached(rows: Sequence[Row], path: Path) -> Path | None:
    """Each request's TTFT against its cached prefix length, with the median per system.

    Uses the `prefix-sweep` records when there are any (one request at a time, so TTFT is
    prefill time), else every record (where queueing mixes in)."""
    sweep = [r for r in rows if r[0] == "prefix-sweep"]
    rows = sweep or rows
    fig, ax = plt.subplots(figsize=(8, 4.5))
    plotted = False
    for system in _order(rows)[1]:
        pts = [(q["cached_tokens"], q["ttft_s"]) for _, s, rec in rows if s == system
               for q in rec["requests"]
               if q["cached_tokens"] is not None and q["ttft_s"] is not None]  # fmt: skip
        if not pts:
            continue
        x, y = np.array(pts, dtype=float).T
        dots = ax.scatter(x, y, s=8, alpha=0.35, label=system)
        ax.plot(*zip(*_medians(x, y), strict=True), color=dots.get_facecolor()[0][:3])
        plotted = True
    if not plotted:
        plt.close(fig)
        return None
    ax.set_yscale("log")
    ax.set_xlabel("cached prefix (tokens)")
    ax.set_ylabel("TTFT (s), log")
    which = "prefix-sweep, one request at a time" if sweep else "every request, all workloads"
    ax.set_title(f"TTFT vs cached prefix length ({which})")
    ax.legend(fontsize=8)
    return _save(fig, path)


PLOTS = {
    "throughput.png": plot_throughput,
    "ttft.png": plot_ttft,
    "hit_rate.png": plot_hit_rate,
    "ttft_vs_cached.png": plot_ttft_vs_cached,
}
