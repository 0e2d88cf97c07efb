"""The FastAPI application: native and OpenAI routes, auth, body limits, error shapes."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response

from radixlm.server.errors import ApiError, error_response, install_error_handlers
from radixlm.server.native_api import router as native_router
from radixlm.server.openai_api import router as openai_router
from radixlm.server.state import ServerState

MAX_BODY_BYTES = 32 * 2**20
OPEN_PATHS = ("/health",)  # answered without an API key (liveness probes)


def create_app(state: ServerState) -> FastAPI:
    """The app for `state`; the engine client (and the supervisor's watch) start and stop
    with the app's lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.connect(state.in_addr, state.out_addr)
        sup = state.supervisor
        watch = asyncio.create_task(sup.watch(state, state.request_stop)) if sup else None
        try:
            yield
        finally:
            state.ready = False
            if watch is not None:
                watch.cancel()
            if state.client is not None:
                state.client.shutdown_nowait()
                await state.client.close()

    app = FastAPI(title="radixlm", lifespan=lifespan)
    app.state.server = state
    install_error_handlers(app)

    @app.middleware("http")
    async def guard(request: Request, call_next) -> Response:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > MAX_BODY_BYTES:
            return error_response(ApiError(413, f"the body is over {MAX_BODY_BYTES} bytes"))
        if request.method == "POST" and "json" not in request.headers.get("content-type", ""):
            # Bodies are always JSON; accept them from clients that label them otherwise.
            headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
            request.scope["headers"] = [*headers, (b"content-type", b"application/json")]
        key = state.cfg.api_key
        if key and request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                return error_response(ApiError(401, "missing or wrong API key"))
        return await call_next(request)

    app.include_router(native_router)
    app.include_router(openai_router)
    return app
