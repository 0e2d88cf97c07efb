"""The FastAPI application: native and OpenAI routes behind the guard, error shapes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from radixlm.server.cache_view import router as cache_view_router
from radixlm.server.errors import install_error_handlers
from radixlm.server.guards import Guard
from radixlm.server.native_api import router as native_router
from radixlm.server.openai_api import router as openai_router
from radixlm.server.openapi_spec import install_openapi
from radixlm.server.state import ServerState
from radixlm.server.trace_api import router as trace_router
from radixlm.server.util_api import router as util_router
from radixlm.server.worker_api import router as worker_router


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
    install_openapi(app)

    app.add_middleware(Guard, access=state.cfg.access, bind_host=state.cfg.host)
    if state.cfg.access.allowed_origins:
        # Outermost: CORS preflights from allowed origins are answered before the guard
        # (browsers send them without credentials); every other request meets the guard.
        app.add_middleware(CORSMiddleware, allow_origins=list(state.cfg.access.allowed_origins),
                           allow_methods=["*"], allow_headers=["*"])  # fmt: skip
    app.include_router(native_router)
    app.include_router(openai_router)
    app.include_router(cache_view_router)
    app.include_router(util_router)
    app.include_router(worker_router)
    app.include_router(trace_router)
    return app
