"""Backends for the language tests: a tiny engine in-process and a live server over HTTP.

Both serve the same tiny random Llama checkpoint, so a program can be run on each and the
results compared. Tests take `backend` (parametrized over both) or a specific one.
"""

from __future__ import annotations

import pytest
from e2e.server_process import serve

import radixlm
import radixlm.lang as rl


@pytest.fixture(scope="session")
def lang_engine(tiny_model_factory):
    """An in-process Engine on the tiny llama model (shut down at the end)."""
    eng = radixlm.Engine(model=str(tiny_model_factory("llama")), max_total_tokens=4096,
                         debug=True, dtype="float32")  # fmt: skip
    yield eng
    eng.shutdown()


@pytest.fixture(scope="session")
def lang_server(tiny_model_factory):
    """The URL of a live `radixlm.launch_server` on the tiny llama model."""
    yield from serve(str(tiny_model_factory("llama")), 4096)


def flush(backend: rl.Backend) -> None:
    """Empty the backend's prefix cache and forget its request records."""
    if isinstance(backend, rl.RuntimeEndpoint):
        backend.flush_cache()
    else:
        assert backend.engine.flush_cache()
    backend.usage.reset()


@pytest.fixture(params=["engine", "http"])
def backend(request, lang_engine, lang_server):
    """A recording backend of each kind on the same model, its cache flushed."""
    if request.param == "engine":
        be = rl.EngineBackend(lang_engine, record_requests=True)
    else:
        be = rl.RuntimeEndpoint(lang_server, record_requests=True)
    flush(be)
    yield be
    be.close()
