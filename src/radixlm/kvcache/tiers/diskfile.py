"""One disk tier entry as one file: a JSON header, then the K/V bytes, checksummed.

Layout: `MAGIC` (8 bytes), the header's length (4 bytes, little endian), the
header (UTF-8 JSON), the payload. The header names the entry (digest, parent,
start, token ids), who wrote it (model fingerprint, tenant label: a hash of
the cache salt, never the salt), the payload's dtype and shape
`[2 (K, V), num_layers, n, num_kv_heads, head_dim]`, its length and its
blake2b checksum. A file is written under a temporary name and renamed into
place, so a crash leaves a `*.tmp` file, never a half-written entry under a
real name; a file that is truncated or altered anyway fails `read_header`
(size, names) or `read_entry` (checksum) and is never loaded as K/V.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import torch

from radixlm.kvcache.tiers.index import Entry, chain_digest

MAGIC = b"RLMKV01\n"
SUFFIX = ".kv"
_LEN = struct.Struct("<I")
_PREFIX = len(MAGIC) + _LEN.size
_MAX_HEADER = 1 << 20


class BadEntryFile(ValueError):
    """A file that is not a complete, intact entry of this cache (the message says why)."""


def entry_path(directory: Path, digest: bytes) -> Path:
    return directory / (digest.hex() + SUFFIX)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def write_entry(path: Path, entry: Entry, fingerprint: str, kv: torch.Tensor) -> int:
    """Write `kv` ([2, L, n, H, D], CPU) as `entry`'s file, atomically; return the file size."""
    payload = kv.contiguous().view(torch.uint8).numpy().tobytes()
    header = {
        "digest": entry.digest.hex(), "parent": entry.parent.hex(), "start": entry.start,
        "tokens": list(entry.tokens), "fingerprint": fingerprint, "tenant": entry.tenant,
        "dtype": dtype_name(kv.dtype), "shape": list(kv.shape), "payload_bytes": len(payload),
        "blake2b": hashlib.blake2b(payload).hexdigest(),
    }  # fmt: skip
    head = json.dumps(header, separators=(",", ":")).encode()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + _LEN.pack(len(head)) + head)
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic: the entry appears whole or not at all
    return _PREFIX + len(head) + len(payload)


def _parse_header(path: Path, blob: bytes, size: int, fingerprint: str) -> dict[str, Any]:
    if len(blob) < _PREFIX or blob[: len(MAGIC)] != MAGIC:
        raise BadEntryFile("not an entry file (bad magic)")
    (hlen,) = _LEN.unpack_from(blob, len(MAGIC))
    if hlen > _MAX_HEADER or len(blob) < _PREFIX + hlen:
        raise BadEntryFile(f"truncated header ({size} bytes)")
    try:
        header = json.loads(blob[_PREFIX : _PREFIX + hlen])
        tokens = tuple(int(t) for t in header["tokens"])
        parent = bytes.fromhex(header["parent"])
        want = _PREFIX + hlen + int(header["payload_bytes"])
    except (ValueError, KeyError, TypeError) as e:
        raise BadEntryFile(f"unreadable header ({e})") from None
    if header.get("fingerprint") != fingerprint:
        raise BadEntryFile("written for another model fingerprint")
    if size != want:
        raise BadEntryFile(f"truncated or padded: {size} bytes, the header says {want}")
    digest = chain_digest(parent, tokens)
    if digest.hex() != header.get("digest") or path.name != digest.hex() + SUFFIX:
        raise BadEntryFile("its name, token ids and digest disagree")
    header["_hlen"], header["_tokens"], header["_parent"], header["_digest"] = (
        hlen, tokens, parent, digest,
    )  # fmt: skip
    return header


def read_header(path: Path, fingerprint: str) -> Entry:
    """The entry a file holds, from its header and size (the payload is not read).

    Raises BadEntryFile when the file is truncated, is not an entry, was written
    for another fingerprint, or its name does not match its contents.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        blob = f.read(_PREFIX)
        if len(blob) == _PREFIX and blob[: len(MAGIC)] == MAGIC:
            blob += f.read(min(_LEN.unpack_from(blob, len(MAGIC))[0], _MAX_HEADER))
    h = _parse_header(path, blob, size, fingerprint)
    return Entry(h["_digest"], h["_parent"], int(h["start"]), h["_tokens"], size, str(h["tenant"]))


def read_entry(path: Path, entry: Entry, fingerprint: str) -> torch.Tensor:
    """The K/V ([2, L, n, H, D], CPU) in `entry`'s file, after checking it whole.

    Raises BadEntryFile unless the header still describes `entry` and the
    payload's checksum holds; OSError when the file is gone.
    """
    blob = path.read_bytes()
    h = _parse_header(path, blob, len(blob), fingerprint)
    if h["_digest"] != entry.digest:
        raise BadEntryFile("the file holds another entry")
    payload = memoryview(blob)[_PREFIX + h["_hlen"] :]
    if hashlib.blake2b(payload).hexdigest() != h["blake2b"]:
        raise BadEntryFile("payload checksum mismatch")
    try:
        dtype = getattr(torch, h["dtype"])
        raw = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        return raw.view(dtype).reshape(h["shape"])
    except (AttributeError, RuntimeError, TypeError) as e:
        raise BadEntryFile(f"payload does not match its dtype and shape ({e})") from None
