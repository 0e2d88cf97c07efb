"""The disk tier: evicted (and freshly cached) prefixes as checksummed files in a directory.

Layout of `--cache-dir DIR`: `DIR/manifest.json` names the model fingerprint,
the block size and the file format; `DIR/entries/<digest>.kv` holds one entry
each (`diskfile`). On open, a manifest for another fingerprint or block size
makes the whole directory off limits (a log line; nothing in it is read,
changed or deleted); otherwise every entry file's header is checked and
indexed (bad ones logged and deleted), so a restarted server finds its
prefixes again. Writes and deletions run on a `BackgroundWriter`; the size
cap deletes least recently used entries (reading one counts as a use).

Thread safety: the scheduler's thread calls lookup/read/save/clear, the
writer thread completes writes and deletions; both take `_lock` around the
index.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Hashable, Sequence
from pathlib import Path

import torch

from radixlm.kvcache.tiers.base import CacheTier, Gather, TierStats
from radixlm.kvcache.tiers.diskfile import (
    SUFFIX,
    BadEntryFile,
    entry_path,
    read_entry,
    read_header,
    write_entry,
)
from radixlm.kvcache.tiers.index import BlockIndex, Entry, Hit, tenant_label
from radixlm.kvcache.tiers.writer import BackgroundWriter

log = logging.getLogger(__name__)

FORMAT = 1


class DiskTier(CacheTier):
    """Entries of one model fingerprint in `directory`, at most `max_bytes` of files."""

    def __init__(
        self,
        directory: Path,
        fingerprint: str,
        max_bytes: int,
        block_tokens: int = 64,
        writer: BackgroundWriter | None = None,
    ) -> None:
        """Use `open`, which checks the directory's manifest first."""
        self.directory = directory
        self.entries_dir = directory / "entries"
        self.fingerprint = fingerprint
        self.max_bytes = max_bytes
        self.block_tokens = block_tokens
        self.stats = TierStats()
        self.index = BlockIndex(fingerprint, block_tokens)
        self._lock = threading.Lock()
        self._writer = writer or BackgroundWriter()

    @classmethod
    def open(
        cls, directory: str | Path, fingerprint: str, max_bytes: int, block_tokens: int = 64
    ) -> DiskTier | None:
        """The tier over `directory` (created if needed), its entries indexed; None if unusable.

        None, with a warning naming the reason, when the directory belongs to
        another model fingerprint or block size, or cannot be written.
        """
        directory = Path(directory)
        manifest = {"format": FORMAT, "fingerprint": fingerprint, "block_tokens": block_tokens}
        try:
            (directory / "entries").mkdir(parents=True, exist_ok=True)
            found = _read_manifest(directory / "manifest.json")
            if found is None:
                _write_json(directory / "manifest.json", manifest)
            elif found != manifest:
                log.warning(
                    "cache dir %s is not used: it was written for model fingerprint %s "
                    "(block %s, format %s), this server is %s (block %d, format %d)",
                    directory, found.get("fingerprint"), found.get("block_tokens"),
                    found.get("format"), fingerprint, block_tokens, FORMAT,
                )  # fmt: skip
                return None
        except OSError as e:
            log.warning("cache dir %s is not used: %s", directory, e)
            return None
        tier = cls(directory, fingerprint, max_bytes, block_tokens)
        tier._scan()
        return tier

    # -- CacheTier -----------------------------------------------------------------

    def lookup(self, key: Sequence[int], extra_key: Hashable | None, start: int) -> Hit:
        with self._lock:
            return self.index.lookup(key, extra_key, start)

    def read(self, hit: Hit) -> torch.Tensor:
        t0 = time.perf_counter()
        parts: list[torch.Tensor] = []
        for piece in hit.pieces:
            kv = self._read_one(piece.entry)
            if kv is None:
                break
            parts.append(kv[:, :, piece.lo : piece.hi])
        out = torch.cat(parts, dim=2) if parts else torch.empty(0)
        self.stats.load_seconds += time.perf_counter() - t0
        self.stats.tokens_loaded += out.shape[2] if parts else 0
        return out

    def save(
        self, key: Sequence[int], extra_key: Hashable | None, start: int, end: int, gather: Gather
    ) -> int:
        with self._lock:
            todo = self.index.missing(key, extra_key, start, end)
        tenant, queued = tenant_label(extra_key), 0
        for m in todo:
            kv = gather(m.lo, m.hi)  # a copy: the pool's slots may be reused from now on
            nbytes = kv.numel() * kv.element_size()
            entry = Entry(m.digest, m.parent, m.lo, tuple(key[m.lo : m.hi]), nbytes, tenant, kv)
            with self._lock:
                self.index.add(entry)  # readable from memory until the file is written
            if not self._writer.submit(lambda e=entry: self._write(e), nbytes):
                with self._lock:
                    self.index.remove(entry.digest)
                self.stats.dropped += 1
                break  # later blocks would hang below a missing one
            queued += m.hi - m.lo
        self.stats.tokens_saved += queued
        return queued

    def clear(self) -> None:
        with self._lock:
            gone = self.index.clear()
        self._writer.submit(lambda: self._delete_files(gone))

    def close(self) -> None:
        self._writer.close()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until queued writes and deletions are done (tests, benchmarks, shutdown)."""
        return self._writer.wait_idle(timeout)

    # -- internals -----------------------------------------------------------------

    def _read_one(self, entry: Entry) -> torch.Tensor | None:
        """An entry's K/V: its pending copy, or its file once verified; None when unusable."""
        with self._lock:
            if self.index.by_digest.get(entry.digest) is not entry:
                return None  # deleted (size cap, clear) since the lookup
            self.index.touch(entry)
            pending = entry.payload
        if pending is not None:
            return pending
        path = entry_path(self.entries_dir, entry.digest)
        try:
            kv = read_entry(path, entry, self.fingerprint)
        except (BadEntryFile, OSError) as e:
            log.warning("cache dir: skipping entry %s: %s", path.name, e)
            self.stats.bad_entries += 1
            with self._lock:
                self.index.remove(entry.digest)
            self._writer.submit(lambda: path.unlink(missing_ok=True))
            return None
        self._writer.submit(lambda: _touch(path))  # recency survives a restart
        return kv

    def _write(self, entry: Entry) -> None:
        """Writer thread: store a pending entry's file, then enforce the size cap."""
        with self._lock:
            if self.index.by_digest.get(entry.digest) is not entry:
                return  # deleted or cleared before its turn came
            kv = entry.payload
        path = entry_path(self.entries_dir, entry.digest)
        try:
            size = write_entry(path, entry, self.fingerprint, kv)
        except OSError as e:
            log.warning("cache dir: could not write %s: %s", path.name, e)
            self.stats.dropped += 1
            with self._lock:
                self.index.remove(entry.digest)
            return
        with self._lock:
            entry.payload = None
            self.index.resize(entry, size)
            victims = self.index.over(self.max_bytes)
            if self.index.by_digest.get(entry.digest) is not entry:
                victims.append(entry)  # cleared while it was being written
        self._delete_files(victims)

    def _delete_files(self, entries: list[Entry]) -> None:
        for e in entries:
            entry_path(self.entries_dir, e.digest).unlink(missing_ok=True)
        self.stats.deleted += len(entries)

    def _scan(self) -> None:
        """Index the directory's entry files, oldest first; log and delete bad ones."""
        found: list[tuple[float, Entry]] = []
        for path in self.entries_dir.iterdir():
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a write a crash interrupted
                continue
            if not path.name.endswith(SUFFIX):
                continue
            try:
                found.append((path.stat().st_mtime, read_header(path, self.fingerprint)))
            except (BadEntryFile, OSError) as e:
                log.warning("cache dir: skipping entry %s: %s", path.name, e)
                self.stats.bad_entries += 1
                path.unlink(missing_ok=True)
        found.sort(key=lambda x: x[0])
        with self._lock:
            for _, entry in found:
                self.index.add(entry)
            victims = self.index.over(self.max_bytes)
        self._delete_files(victims)
        log.info(
            "cache dir %s: %d entries (%.1f MiB) of model %s",
            self.directory, len(self.index), self.index.total_bytes / 2**20, self.fingerprint[:12],
        )  # fmt: skip

    @property
    def entries(self) -> int:
        return len(self.index)


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"format": "unreadable"}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
