"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, on every route."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from radixlm.sampling.params import SamplingParamsError

log = logging.getLogger(__name__)

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
         415: "invalid_request_error", 429: "rate_limit_error", 500: "internal_error",
         503: "service_unavailable"}  # fmt: skip


class ApiError(Exception):
    """An error answered with `status` and OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers
        self.type = type or TYPES.get(status, "invalid_request_error" if status < 500 else "error")


def error_body(message: str, type: str, param: str | None = None, code: Any = None) -> dict:
    """The JSON body of an error response."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(e: ApiError) -> JSONResponse:
    body = error_body(e.message, e.type, e.param, e.code)
    return JSONResponse(body, status_code=e.status, headers=e.headers)


def sampling_error(e: SamplingParamsError, names: dict[str, str] | None = None) -> ApiError:
    """A 400 naming the field; `names` maps SGLang field names to the API's own (max_tokens)."""
    field = (names or {}).get(e.field, e.field)
    return ApiError(400, f"{field}: {e.message}", param=field)


def _loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


def validation_error(e: RequestValidationError) -> ApiError:
    """Turn pydantic's first complaint into a 400 naming the field (or saying the JSON is bad)."""
    errors = e.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the body is not valid JSON: {first.get('msg')}", param="body")
    param = _loc(tuple(first.get("loc", ())))
    return ApiError(400, f"{param}: {first.get('msg')}", param=param)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure in the error shape; unexpected ones are logged and 500."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, e: ApiError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(e))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        # Starlette's own errors carry headers worth keeping (405's Allow).
        return error_response(ApiError(e.status_code, str(e.detail), headers=e.headers))

    @app.exception_handler(json.JSONDecodeError)
    async def _json(_: Request, e: json.JSONDecodeError) -> JSONResponse:
        return error_response(ApiError(400, f"the body is not valid JSON: {e}", param="body"))

    @app.exception_handler(Exception)
    async def _internal(_: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_body(f"internal error: {e}", "internal_error"), status_code=500)
