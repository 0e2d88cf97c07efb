"""Which token blocks a lower cache tier holds: a hash chain over fixed-size blocks.

A tier stores K/V in *entries*. An entry covers tokens `[start, start + n)` of
one token path, with `start` a multiple of `block` and `n <= block`: a full
block (n == block) or the partial tail of a cached sequence (n < block). Its
`digest` chains everything before it:

    root(ns)         = H("radixlm-kv", fingerprint, namespace)
    digest(entry)    = H(parent, the entry's token ids as int64)

where `parent` is the root, or the digest of the full block before it. So an
entry is found only by a key that agrees with every token before it, in the
same namespace (tenant salt), under the same model fingerprint, and the
digest of a block never depends on which entries exist below it: a lookup
can start at any block boundary (the in-memory tree already holds the part
before). The index is plain data, shared by every tier implementation; it
takes no locks (the tier that owns it does).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DIGEST_SIZE = 16  # bytes of each blake2b digest


def _h(*parts: bytes) -> bytes:
    return hashlib.blake2b(b"".join(parts), digest_size=DIGEST_SIZE).digest()


def namespace_bytes(extra_key: Hashable | None) -> bytes:
    """The bytes a namespace (a request's cache salt, or None) is hashed as."""
    if extra_key is None:
        return b"\x00"
    text = extra_key if isinstance(extra_key, str) else repr(extra_key)
    return b"\x01" + text.encode()


def tenant_label(extra_key: Hashable | None) -> str:
    """A short hash naming a namespace in files and logs (never the salt itself)."""
    return hashlib.blake2b(namespace_bytes(extra_key), digest_size=8).hexdigest()


def tokens_bytes(tokens: Sequence[int]) -> bytes:
    return np.asarray(tokens, dtype=np.int64).tobytes()


def chain_digest(parent: bytes, tokens: Sequence[int]) -> bytes:
    """The digest of an entry holding `tokens` right after `parent`."""
    return _h(parent, tokens_bytes(tokens))


@dataclass(eq=False)
class Entry:
    """One stored block (or partial tail block) of a token path.

    `payload` is the tier's own: e.g. the K/V tensor while a disk write is
    pending, a host tensor for a memory tier, None once only a file holds it.
    """

    digest: bytes
    parent: bytes
    start: int
    tokens: tuple[int, ...]
    nbytes: int
    tenant: str
    payload: Any = None

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)


@dataclass(frozen=True)
class Piece:
    """Tokens `[lo, hi)` (offsets inside `entry`) of one entry a lookup uses."""

    entry: Entry
    lo: int
    hi: int


@dataclass(frozen=True)
class Hit:
    """What a tier holds of a key beyond `start`: tokens `[start, end)`, in `pieces` order."""

    start: int
    end: int
    pieces: tuple[Piece, ...] = ()

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Missing:
    """A block a save must write: key tokens `[lo, hi)` after `parent`, as `digest`."""

    parent: bytes
    digest: bytes
    lo: int
    hi: int


def _common_len(a: tuple[int, ...], key: Sequence[int], pos: int) -> int:
    m = min(len(a), len(key) - pos)
    for i in range(m):
        if a[i] != key[pos + i]:
            return i
    return m


@dataclass
class BlockIndex:
    """Entries by digest, by parent (for lookups), and in least-recently-used order."""

    fingerprint: str
    block: int = 64
    by_digest: dict[bytes, Entry] = field(default_factory=dict)
    children: dict[bytes, dict[tuple[int, ...], Entry]] = field(default_factory=dict)
    lru: OrderedDict[bytes, Entry] = field(default_factory=OrderedDict)  # oldest first
    total_bytes: int = 0

    def __post_init__(self) -> None:
        if self.block < 1:
            raise ValueError("block: must be at least 1 token")

    def root(self, extra_key: Hashable | None) -> bytes:
        """The chain's start for namespace `extra_key` under this fingerprint."""
        return _h(b"radixlm-kv\x00", self.fingerprint.encode(), b"\x00", namespace_bytes(extra_key))

    def digest_at(self, key: Sequence[int], extra_key: Hashable | None, pos: int) -> bytes:
        """The chain digest after the full blocks of `key[:pos]` (pos a multiple of block)."""
        h = self.root(extra_key)
        for k in range(0, pos, self.block):
            h = chain_digest(h, key[k : k + self.block])
        return h

    # -- lookup -------------------------------------------------------------------

    def lookup(self, key: Sequence[int], extra_key: Hashable | None, start: int) -> Hit:
        """The longest run `key[start:end]` the entries cover, continuing block by block.

        The run may end inside an entry (a key shorter than the entry, or a
        partial entry that only partly agrees). An empty hit when nothing
        continues `key[:start]`.
        """
        b, n = self.block, len(key)
        pos = start - start % b
        h = self.digest_at(key, extra_key, pos)
        pieces: list[Piece] = []
        while pos < n:
            kids = self.children.get(h)
            if not kids:
                break
            entry = kids.get(tuple(key[pos : pos + b])) if pos + b <= n else None
            if entry is not None:  # a whole block agrees: go on below it
                pieces.append(Piece(entry, max(start, pos) - pos, b))
                h, pos = entry.digest, pos + b
                continue
            best, best_len = None, 0
            for cand in kids.values():  # the run ends here, in the entry that agrees longest
                c = _common_len(cand.tokens, key, pos)
                if c > best_len:
                    best, best_len = cand, c
            if best is not None and pos + best_len > start:
                pieces.append(Piece(best, max(start, pos) - pos, best_len))
                pos += best_len
            break
        end = max(start, pos) if pieces else start
        return Hit(start, end, tuple(pieces))

    def missing(
        self, key: Sequence[int], extra_key: Hashable | None, start: int, end: int
    ) -> list[Missing]:
        """The blocks holding `key[start:end]` that no entry covers yet (in key order).

        A block starting before `start` is included whole (its head is read
        from `key`'s earlier part). A partial tail is skipped when an entry
        beside it already begins with the same tokens.
        """
        b = self.block
        pos = start - start % b
        h = self.digest_at(key, extra_key, pos)
        out: list[Missing] = []
        while pos < end:
            hi = min(pos + b, end)
            tokens = tuple(key[pos:hi])
            d = chain_digest(h, tokens)
            if d not in self.by_digest and not self._covered(h, tokens):
                out.append(Missing(h, d, pos, hi))
            h, pos = d, hi
        return out

    def _covered(self, parent: bytes, tokens: tuple[int, ...]) -> bool:
        if len(tokens) == self.block:
            return False  # a full block is covered only by itself (by digest)
        kids = self.children.get(parent, {})
        return any(t[: len(tokens)] == tokens for t in kids)

    # -- membership and recency --------------------------------------------------

    def add(self, entry: Entry) -> None:
        """Record `entry` as the most recently used (replacing one with its digest)."""
        self.remove(entry.digest)
        self.by_digest[entry.digest] = entry
        self.children.setdefault(entry.parent, {})[entry.tokens] = entry
        self.lru[entry.digest] = entry
        self.total_bytes += entry.nbytes

    def remove(self, digest: bytes) -> Entry | None:
        """Forget the entry with `digest`; return it (None when unknown)."""
        entry = self.by_digest.pop(digest, None)
        if entry is None:
            return None
        kids = self.children.get(entry.parent)
        if kids is not None:
            kids.pop(entry.tokens, None)
            if not kids:
                del self.children[entry.parent]
        del self.lru[digest]
        self.total_bytes -= entry.nbytes
        return entry

    def touch(self, entry: Entry) -> None:
        """`entry` was just used: it becomes the last to be deleted."""
        if entry.digest in self.lru:
            self.lru.move_to_end(entry.digest)

    def resize(self, entry: Entry, nbytes: int) -> None:
        """Correct an entry's size (e.g. to its file's size once written)."""
        if entry.digest in self.by_digest:
            self.total_bytes += nbytes - entry.nbytes
        entry.nbytes = nbytes

    def over(self, max_bytes: int) -> list[Entry]:
        """Remove and return least-recently-used entries until total_bytes <= max_bytes."""
        out = []
        while self.total_bytes > max_bytes and self.lru:
            digest = next(iter(self.lru))
            entry = self.remove(digest)
            assert entry is not None
            out.append(entry)
        return out

    def clear(self) -> list[Entry]:
        """Forget every entry; return them."""
        out = list(self.lru.values())
        self.by_digest.clear()
        self.children.clear()
        self.lru.clear()
        self.total_bytes = 0
        return out

    def __len__(self) -> int:
        return len(self.by_digest)
