"""Read a request trace back: every record of a directory, or the newest few.

A line that does not parse (a file cut off mid-line by a crash, say) is skipped
and counted, never fatal.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from radixlm.trace.record import TraceHeader, TraceRecord
from radixlm.trace.writer import trace_files


class TraceError(ValueError):
    """The trace directory holds no trace."""


@dataclass
class Trace:
    """The records of a trace in arrival order, and the header of its newest file."""

    header: TraceHeader
    records: list[TraceRecord]
    bad_lines: int = 0
    files: list[str] = field(default_factory=list)

    @property
    def hashed(self) -> bool:
        return self.header.hashed


def read_trace(trace_dir: str | Path, limit: int | None = None) -> Trace:
    """The trace in `trace_dir` (or a single trace file), oldest first.

    With `limit`, only the newest `limit` records. Raises TraceError when there
    is no trace file or no header.
    """
    path = Path(trace_dir)
    files = [path] if path.is_file() else trace_files(path)
    if not files:
        raise TraceError(f"no trace files (trace-*.jsonl) in {path}")
    records: deque[TraceRecord] = deque(maxlen=limit)
    header: TraceHeader | None = None
    bad = 0
    for f in files:
        with f.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    obj = orjson.loads(line)  # a bad line: JSONDecodeError, a ValueError
                    if "header" in obj:
                        header = TraceHeader.from_dict(obj["header"])
                    else:
                        rec = TraceRecord.from_json_dict(obj)
                        rec.extra["run"] = header.started if header else 0.0
                        records.append(rec)
                except (ValueError, KeyError, TypeError):
                    bad += 1
    if header is None:
        raise TraceError(f"the trace in {path} has no header line")
    return Trace(header, arrival_order(list(records)), bad, [str(f) for f in files])


def arrival_order(records: list[TraceRecord]) -> list[TraceRecord]:
    """`records` (in finish order) sorted by arrival; steps renumbered to grow across runs.

    Each server run counts steps from 0; a later run's steps are shifted past the
    earlier run's last step, so a replay sees the runs one after the other.
    """
    ordered = sorted(records, key=lambda r: (r.extra.get("run", 0.0), r.step, r.t))
    offset, last_run, top = 0, None, 0
    for rec in ordered:
        run = rec.extra.get("run", 0.0)
        if run != last_run and last_run is not None:
            offset = top + 1
        last_run = run
        rec.step += offset
        top = max(top, rec.step)
    return ordered


def parse_trace(header: dict, lines: list[dict]) -> Trace:
    """A trace from its JSON parts (what the server's /trace route answers)."""
    head = TraceHeader.from_dict(header)
    records = [TraceRecord.from_json_dict(d) for d in lines]
    for rec, d in zip(records, lines, strict=True):
        rec.extra["run"] = d.get("run", head.started)
    return Trace(head, arrival_order(records))
