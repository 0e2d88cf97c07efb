"""`radixlm bench report`: records -> a markdown table, the targets' verdicts, PNG plots.

With `--markdown FILE`, the report replaces what lies between the BEGIN and END markers
of FILE (so the prose around it stays), or is written as the whole file when FILE has no
markers. Without it, the markdown goes to standard output.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from radixlm.bench.config import BenchReportConfig
from radixlm.bench.plots import PLOTS, Row
from radixlm.bench.record import read_record
from radixlm.bench.targets import TARGETS, check
from radixlm.bench.workloads import WORKLOADS

BEGIN = "<!-- radixlm bench report: begin (generated, do not edit) -->"
END = "<!-- radixlm bench report: end -->"


def ordered_rows(records: Sequence[dict[str, Any]]) -> list[Row]:
    """(workload, label, record), workloads in `WORKLOADS` order, systems as first seen.

    A later record of the same workload and label replaces an earlier one."""
    latest = {(r["workload"], r["label"]): r for r in records}
    systems = list(dict.fromkeys(r["label"] for r in records))
    names = [*WORKLOADS, *sorted({w for w, _ in latest} - set(WORKLOADS))]
    return [(w, s, latest[(w, s)]) for w in names for s in systems if (w, s) in latest]


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def table(rows: Sequence[Row], baselines: Sequence[str]) -> str:
    """The markdown table: one line per (workload, system)."""
    head = ["workload", "system", "reqs", "s", "req/s", "in tok/s", "out tok/s",
            "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms", "e2e p50 s", "hit rate", "oracle",
            "hit/oracle", *(f"x {b}" for b in baselines)]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    by_key = {(w, s): rec["summary"] for w, s, rec in rows}
    for w, s, rec in rows:
        m = rec["summary"]
        ratios = []
        for b in baselines:
            base = by_key.get((w, b))
            ok = base is not None and base["total_throughput"] > 0
            ratios.append(f"{m['total_throughput'] / base['total_throughput']:.2f}" if ok else "-")
        failed = f" ({m['failed']} failed)" if m["failed"] else ""
        cells = [w, s + failed, str(m["completed"]), _fmt(m["duration_s"], ".1f"),
                 _fmt(m["request_throughput"], ".2f"), _fmt(m["input_throughput"], ".0f"),
                 _fmt(m["output_throughput"], ".1f"), _fmt(m["ttft_s"]["p50"], ".0f", 1e3),
                 _fmt(m["ttft_s"]["p99"], ".0f", 1e3), _fmt(m["itl_s"]["p50"], ".1f", 1e3),
                 _fmt(m["e2e_s"]["p50"], ".2f"), _fmt(m["hit_rate"], ".1%"),
                 _fmt(m["oracle_hit_rate"], ".1%"), _fmt(m["hit_vs_oracle"], ".1%"),
                 *ratios]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _workload_lines(rows: Sequence[Row]) -> list[str]:
    seen: dict[str, dict[str, Any]] = {}
    for w, _, rec in rows:
        seen.setdefault(w, rec["workload_params"])
    return [f"- `{w}`: " + ", ".join(f"{k}={v}" for k, v in p.items()) for w, p in seen.items()]


def render(rows: Sequence[Row], baselines: Sequence[str], images: Sequence[str]) -> str:
    """The generated markdown block (markers included)."""
    machine = rows[0][2]["machine"] if rows else {}
    parts = [BEGIN, "", f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} "
             f"cores, {machine.get('os', '?')}. Records: {len(rows)}.", "", "Workloads:", "",
             *_workload_lines(rows), "", table(rows, baselines), ""]  # fmt: skip
    summaries = {(w, s): rec["summary"] for w, s, rec in rows}
    verdicts = [line for t in TARGETS if (line := check(t, summaries))]
    if verdicts:
        parts += ["Targets:", "", *verdicts, ""]
    parts += [f"![{Path(i).stem}]({i})" for i in images]
    return "\n".join([*parts, "", END])


def write_report(cfg: BenchReportConfig) -> str:
    """Write the plots and the markdown `cfg` asks for; returns the markdown block."""
    rows = ordered_rows([read_record(p) for p in cfg.records])
    images: list[str] = []
    if cfg.img_dir:
        Path(cfg.img_dir).mkdir(parents=True, exist_ok=True)
        md_dir = Path(cfg.markdown).parent if cfg.markdown else Path.cwd()
        for name, plot in PLOTS.items():
            written = plot(rows, Path(cfg.img_dir) / name)
            if written is not None:
                images.append(os.path.relpath(written, md_dir))
    block = render(rows, cfg.baselines, images)
    if cfg.markdown is None:
        print(block)
        return block
    path = Path(cfg.markdown)
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + block + rest.split(END, 1)[1]
    else:
        new = block + "\n"
    path.write_text(new)
    return block
