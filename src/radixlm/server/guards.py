"""The server's front door, an ASGI middleware: Host/Origin, API keys, body limits, JSON only.

Every HTTP request passes `Guard` before any route runs. In order it answers:
- 403 for a Host header that does not name this server, or a cross-site Origin;
- 401 for a missing or wrong API key (except on `OPEN_PATHS`);
- 403 for a tenant key on an admin route (anything outside `TENANT_PATHS`);
- 413 for a body over the limit, whatever the transfer encoding (chunked bodies
  are counted as they arrive; nothing past the limit is read);
- 415 for a non-empty body that is not labelled JSON;
- 400 for a string holding a lone UTF-16 surrogate, naming its field.
A request that passes carries its `Caller` in `request.state.caller`, and the routes
read the body the guard already buffered.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request

from radixlm.server.access import ADMIN, AccessConfig, Caller
from radixlm.server.errors import ApiError, error_response

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

OPEN_PATHS = ("/health",)  # answered without an API key (liveness probes)
TENANT_PATHS = ("/generate", "/v1/completions", "/v1/chat/completions", "/v1/models",
                "/abort_request", "/health", "/health_generate", "/ready", "/get_model_info",
                "/model_info", "/tokenize", "/detokenize", "/version")  # fmt: skip
TENANT_PREFIXES = ("/v1/models/",)
BROWSER_PATHS, BROWSER_PREFIXES = ("/cache", "/docs"), ("/cache/",)
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")  # a JSON escape of a UTF-16 surrogate


class Guard:
    """ASGI middleware enforcing `access` in front of `app` (see the module docstring)."""

    def __init__(self, app: Callable, access: AccessConfig, bind_host: str) -> None:
        self.app, self.access, self.bind_host = app, access, bind_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            caller = self._admit(scope, Headers(scope=scope))
            if scope["method"] in ("POST", "PUT", "PATCH"):
                receive = await self._buffer_body(scope, receive)
        except ApiError as e:
            await error_response(e)(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)

    def _admit(self, scope: Scope, headers: Headers) -> Caller:
        """The caller of a request whose headers pass; raises ApiError 401/403 otherwise."""
        host = headers.get("host", "")
        if not self.access.host_allowed(host, self.bind_host):
            raise ApiError(403, f"the Host {host!r} is not this server's (see --allowed-hosts)",
                           "permission_error")  # fmt: skip
        origin = headers.get("origin")
        if origin is not None and not self.access.origin_allowed(origin, host):
            raise ApiError(403, f"requests from the web origin {origin!r} are not allowed "
                           "(see --allowed-origins)", "permission_error")  # fmt: skip
        path = scope["path"]
        if path in OPEN_PATHS:
            return ADMIN
        caller = self.access.caller(headers.get("authorization", ""))
        if caller is None:
            # Pages a person opens in a browser: let it ask for the key (as the password).
            ask = {"WWW-Authenticate": 'Basic realm="radixlm"'} if path in BROWSER_PATHS or (
                path.startswith(BROWSER_PREFIXES)) else None  # fmt: skip
            raise ApiError(401, "missing or wrong API key", headers=ask)
        if not caller.admin and path not in TENANT_PATHS and not path.startswith(TENANT_PREFIXES):
            raise ApiError(403, f"{path} needs an admin API key", "permission_error")
        return caller

    async def _buffer_body(self, scope: Scope, receive: Receive) -> Receive:
        """Read the whole body within the limit and check it; return a `receive` that replays
        it, then passes later messages (the disconnect) through."""
        limit = self.access.max_body_bytes
        headers = Headers(scope=scope)
        size = headers.get("content-length", "")
        if size.isdigit() and int(size) > limit:
            raise _too_large(limit)
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ApiError(499, "the client disconnected", "client_closed_request")
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if body and "json" not in headers.get("content-type", "").lower():
            raise ApiError(415, "the body must be JSON (Content-Type: application/json)",
                           param="content-type")  # fmt: skip
        if _SURROGATE.search(body):
            where = await asyncio.to_thread(lone_surrogate_field, body)
            if where is not None:
                raise ApiError(400, f"{where}: holds a lone UTF-16 surrogate, which is not "
                               "valid Unicode text", param=where)  # fmt: skip
        return _replay(body, receive)


def caller_of(request: Request) -> Caller:
    """Who sent `request` (set by the guard; an admin for apps built without it)."""
    return getattr(request.state, "caller", ADMIN)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the body is over {limit} bytes (see --max-body-bytes)",
                    code="body_too_large")  # fmt: skip


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def lone_surrogate_field(body: bytes) -> str | None:
    """The dotted path (`messages.0.content`) of the first string or key in a JSON body that
    cannot be encoded as UTF-8; None when there is none or the body is not JSON."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if not _encodable(value):
                return path or "body"
        elif isinstance(value, dict):
            for k, v in value.items():
                sub = f"{path}.{k}" if path else str(k)
                if not _encodable(k):
                    return path or "body"
                stack.append((sub, v))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), v) for i, v in enumerate(value))
    return None


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
