"""Who may call the server and what they see: API keys, tenants, Host/Origin, cache reports.

A key without a tenant is an admin key: it may use every route and sees global
statistics. A key with a tenant may generate, abort its own requests and read
model information; its requests live in the tenant's cache namespace, which the
client cannot choose. With no key at all the server is single-user: every caller
is admin, and Host/Origin checks keep web pages on other sites from driving it.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

CACHE_REPORTS = ("exact", "coarse", "off")  # --cache-report
COARSE_TOKENS = 256  # `coarse` rounds cached_tokens down to a multiple of this
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
MAX_BODY_BYTES = 32 * 2**20


@dataclass(frozen=True)
class ApiKey:
    """One accepted key; `tenant` None makes it an admin key."""

    key: str
    tenant: str | None = None

    def __post_init__(self) -> None:
        if not self.key or any(c.isspace() for c in self.key):
            raise ValueError("api_key: a key must be non-empty and hold no whitespace")
        if self.tenant is not None and not self.tenant.strip():
            raise ValueError("api_key: the tenant after ':' is empty")

    @classmethod
    def parse(cls, text: str) -> ApiKey:
        """`KEY` (admin) or `KEY:TENANT`."""
        key, sep, tenant = text.strip().partition(":")
        return cls(key, tenant.strip() if sep else None)


def read_key_file(path: str | Path) -> tuple[ApiKey, ...]:
    """The keys of a file with one `KEY:TENANT` (or bare admin `KEY`) per line; `#` comments.

    Raises ValueError naming the file and line for a malformed line or a missing file.
    """
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ValueError(f"api_key_file: cannot read {path}: {e.strerror}") from None
    keys = []
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            keys.append(ApiKey.parse(line))
        except ValueError as e:
            raise ValueError(f"api_key_file: {path} line {n}: {e}") from None
    return tuple(keys)


@dataclass(frozen=True)
class Caller:
    """Who sent a request: `tenant` None is an admin (or the single user of a key-less server)."""

    tenant: str | None = None

    @property
    def admin(self) -> bool:
        return self.tenant is None

    def cache_salt(self, client_salt: str | None) -> str | None:
        """The request's cache namespace: a tenant's own, with the client's salt inside it.

        A client salt can never name another tenant's namespace: tenant namespaces start
        with NUL, which `check_client_salt` refuses in client salts.
        """
        if self.tenant is None:
            return client_salt
        return f"\x00{self.tenant}\x00{client_salt or ''}"


ADMIN = Caller()


def check_client_salt(salt: str | None) -> None:
    """Raise ValueError("cache_salt: ...") for a salt that could forge a tenant namespace."""
    if salt is not None and "\x00" in salt:
        raise ValueError("cache_salt: must not contain NUL characters")


@dataclass(frozen=True)
class AccessConfig:
    """The server's access rules (see the module docstring); validated on construction."""

    api_keys: tuple[ApiKey, ...] = ()
    allowed_hosts: tuple[str, ...] = ()  # beyond localhost, IP literals and --host; "*": any
    allowed_origins: tuple[str, ...] = ()  # cross-origin browsers allowed (CORS); "*": any
    cache_report: str = "exact"
    max_body_bytes: int = MAX_BODY_BYTES
    _by_key: dict[str, ApiKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.cache_report not in CACHE_REPORTS:
            raise ValueError(f"cache_report: one of {', '.join(CACHE_REPORTS)}")
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes: must be at least 1024")
        by_key = {k.key: k for k in self.api_keys}
        if len(by_key) < len(self.api_keys):
            raise ValueError("api_key: the same key is given twice")
        object.__setattr__(self, "_by_key", by_key)

    def caller(self, authorization: str) -> Caller | None:
        """The caller an `Authorization` header value names; None when the key is wrong.

        `Bearer KEY`, or HTTP Basic with the key as the password (what a browser sends
        for a page). Without keys every caller is admin. Keys compare in constant time.
        """
        if not self.api_keys:
            return ADMIN
        import hmac

        given = _presented_key(authorization)
        for key in self.api_keys:
            if hmac.compare_digest(given.encode(), key.key.encode()):
                return Caller(key.tenant)
        return None

    def host_allowed(self, host_header: str, bind_host: str) -> bool:
        """Whether a Host header names this server (DNS-rebinding defence).

        Always true with API keys (a rebinding page cannot send them). Otherwise allowed:
        localhost names, IP literals (a rebinding attack needs a DNS name), the bind
        host, and `allowed_hosts`.
        """
        if self.api_keys or "*" in self.allowed_hosts:
            return True
        name = _hostname(host_header)
        if name in LOCAL_HOSTS or name == bind_host or name in self.allowed_hosts:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return name.endswith(".localhost")
        return True

    def origin_allowed(self, origin: str, host_header: str) -> bool:
        """Whether a browser page at `origin` may call: the same origin, or an allowed one."""
        if "*" in self.allowed_origins or origin in self.allowed_origins:
            return True
        return origin.split("://", 1)[-1] == host_header

    def reported_cached(self, cached: int) -> int:
        """`cached_tokens` as this server reports it (see `--cache-report`)."""
        if self.cache_report == "exact":
            return cached
        if self.cache_report == "coarse":
            return cached - cached % COARSE_TOKENS
        return 0


def _presented_key(authorization: str) -> str:
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value, validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return ""
    return value.strip() if scheme.lower() == "bearer" else ""


def _hostname(host_header: str) -> str:
    """The name in a Host header: `[::1]:8080` -> `::1`, `a.b:80` -> `a.b` (lower case)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host
