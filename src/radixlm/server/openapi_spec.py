"""The OpenAPI document as the server really answers: its error codes and content types.

FastAPI documents a 422 for every validated route; this server answers 400 in
OpenAI's error shape instead. The guard (`guards.py`) may answer 401/403 on any
route and 413/415 on any route with a body; routes that need the engine answer
503 while it is starting, stopping or dead; generation routes answer 429 when the
queue is full and stream `text/event-stream` when asked.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {},
            },
        }
    },
}
WHY = {
    400: "a field is invalid (the error's `param` names it)",
    401: "missing or wrong API key",
    403: "a foreign Host or web Origin, or an admin route with a tenant key",
    404: "an unknown model, or a feature this server runs without",
    413: "the body is over --max-body-bytes",
    415: "the body is not JSON",
    429: "the queue is full (see Retry-After)",
    503: "the engine is starting, stopping or gone",
}
GENERATION = ("/generate", "/v1/completions", "/v1/chat/completions")


def _error(code: int) -> dict[str, Any]:
    return {"description": WHY[code], "content": {"application/json": {"schema": ERROR_SCHEMA}}}


def truthful(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` (FastAPI's document) with the responses this server really sends; changed in
    place and returned."""
    for path, ops in spec.get("paths", {}).items():
        for op in ops.values():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            codes = [400, 401, 403, 404, 503]
            if "requestBody" in op:
                codes += [413, 415]
            if path in GENERATION:
                codes.append(429)
                ok = responses.get("200", {}).setdefault("content", {})
                ok["text/event-stream"] = {"schema": {}}  # JSON chunks, then "[DONE]"
            for code in codes:
                responses.setdefault(str(code), _error(code))
    spec.get("components", {}).get("schemas", {}).pop("HTTPValidationError", None)
    spec.get("components", {}).get("schemas", {}).pop("ValidationError", None)
    return spec


def install_openapi(app: FastAPI) -> None:
    """Serve `truthful` OpenAPI at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
            app.openapi_schema = truthful(spec)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
