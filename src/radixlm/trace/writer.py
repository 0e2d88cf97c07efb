"""Write the request trace: one JSON line per finished request, files rotated by size.

Files are `trace-000001.jsonl`, `trace-000002.jsonl`, ... in `trace_dir`; a new
one starts when the current one would pass `max_bytes`, and only the newest
`max_files` are kept. A restarted server continues the numbering. Each file
begins with a header line (`TraceHeader`). Lines are flushed as they are written,
so a reader (the server's trace route, `radixlm doctor`) sees every finished
request at once.

The writer runs on the engine loop's thread and never raises into it: a failed
write is logged once and turns the trace off.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import IO, Any

import orjson

from radixlm.scheduler.request import Req
from radixlm.trace.record import TraceHeader, TraceRecord, page_hashes, tenant_label

log = logging.getLogger(__name__)

FILE_GLOB = "trace-*.jsonl"


def trace_files(trace_dir: str | Path) -> list[Path]:
    """The trace files of `trace_dir`, oldest first (empty if there are none)."""
    return sorted(Path(trace_dir).glob(FILE_GLOB))


class TraceWriter:
    """Appends `TraceRecord`s for finished requests; see the module docstring.

    Call `arrived(rid, step)` when a request is queued (`step`: engine steps run
    so far) and `finished(reqs)` after a step with the requests that ended in it.
    """

    def __init__(
        self,
        trace_dir: str | Path,
        header: TraceHeader,
        max_bytes: int = 64 << 20,
        max_files: int = 8,
    ) -> None:
        if max_bytes < 1024:
            raise ValueError("trace max size: must be at least 1 KiB")
        if max_files < 1:
            raise ValueError("trace max files: must be at least 1")
        self.dir = Path(trace_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.header = header
        self.max_bytes, self.max_files = max_bytes, max_files
        self._arrivals: dict[str, int] = {}
        self._file: IO[str] | None = None
        self._size = 0
        self._seq = self._last_seq()
        self.enabled = True
        self.written = 0

    # -- the engine loop's calls ---------------------------------------------------

    def arrived(self, rid: str, step: int) -> None:
        """Remember when request `rid` was queued (in engine steps)."""
        if self.enabled:
            self._arrivals[rid] = step

    def finished(self, reqs: list[Req]) -> None:
        """Write one line for each request of `reqs` (finished ones); never raises."""
        if not self.enabled:
            return
        try:
            for req in reqs:
                self._write(self.record_of(req))
        except (OSError, ValueError, TypeError) as e:
            log.error("the request trace stops: cannot write to %s: %s", self.dir, e)
            self.enabled = False
            self.close()

    def record_of(self, req: Req) -> TraceRecord:
        """The trace record of finished request `req` (consumes its arrival step)."""
        step = self._arrivals.pop(req.rid, 0)
        now_wall, now = time.time(), time.perf_counter()
        hashed = self.header.hashed
        ids = req.input_ids
        reason = req.finish_reason
        return TraceRecord(
            t=round(now_wall - (now - req.created_at), 6),
            step=step,
            tenant=tenant_label(req.extra_key),
            prompt_len=len(ids),
            cached=req.cached_tokens,
            output_len=len(req.output_ids),
            max_new_tokens=req.params.max_new_tokens,
            finish=reason.type if reason is not None else "",
            admitted=req.admitted_once,
            logprob_start=req.logprob_start_len if req.return_logprob else -1,
            prompt=None if hashed else list(ids),
            output=None if hashed else list(req.output_ids),
            pages=[int(h, 16) for h in page_hashes(ids, self.header.page_size)]
            if hashed
            else None,
        )

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    # -- files ---------------------------------------------------------------------

    def _write(self, record: TraceRecord) -> None:
        line = orjson.dumps(record.to_json_dict()).decode() + "\n"  # 3 us, json.dumps 60
        if self._file is None or self._size + len(line) > self.max_bytes:
            self._rotate()
        assert self._file is not None
        self._file.write(line)
        self._file.flush()
        self._size += len(line)
        self.written += 1

    def _rotate(self) -> None:
        """Start the next file (with its header) and drop the oldest beyond `max_files`."""
        self.close()
        self._seq += 1
        path = self.dir / f"trace-{self._seq:06d}.jsonl"
        self._file = path.open("w", encoding="utf-8")
        head = orjson.dumps({"header": self.header.to_dict()}).decode() + "\n"
        self._file.write(head)
        self._size = len(head)
        for old in trace_files(self.dir)[: -self.max_files]:
            old.unlink(missing_ok=True)

    def _last_seq(self) -> int:
        last = 0
        for path in trace_files(self.dir):
            digits = path.stem.removeprefix("trace-")
            if digits.isdigit():
                last = max(last, int(digits))
        return last


def header_for(model: str, pool_tokens: int, context_length: int, scheduler: Any,
               hashed: bool, page_size: int) -> TraceHeader:  # fmt: skip
    """The header of a server with this model, pool size and `SchedulerConfig`."""
    import dataclasses
    import enum

    sched = {
        k: v.value if isinstance(v, enum.Enum) else v
        for k, v in dataclasses.asdict(scheduler).items()
    }
    return TraceHeader(
        model=model,
        max_total_tokens=pool_tokens,
        context_length=context_length,
        scheduler=sched,
        hashed=hashed,
        page_size=page_size if hashed else 1,
        started=time.time(),
    )
