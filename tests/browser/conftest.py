"""Headless Chromium (Debian's `chromium` package) driven by Playwright, and a live server.

The browser tests skip, saying how to get what is missing, when the Playwright package
or a Chromium binary is not installed (`make install` installs both; by hand:
`apt-get install chromium` and `pip install playwright`). `RADIXLM_CHROMIUM` names
another Chromium binary.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest
from e2e.server_process import free_port, start_server, stop_server

API_KEY = "view-test-key"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    """The Chromium binary to drive: $RADIXLM_CHROMIUM, else the first on PATH."""
    named = os.environ.get("RADIXLM_CHROMIUM")
    if named:
        return named if os.access(named, os.X_OK) else None
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium, or a skip that says how to install what is missing.

    Module-scoped on purpose: while Playwright's sync API is open it keeps an asyncio
    loop running on the main thread, so any later test's `asyncio.run` would fail."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the browser tests need Playwright: pip install 'playwright==1.65.2'")
    exe = chromium_path()
    if exe is None:
        pytest.skip("the browser tests need Chromium: apt-get install chromium "
                    "(or set RADIXLM_CHROMIUM to a Chromium binary)")  # fmt: skip
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, headless=True,
                               args=["--no-sandbox", "--disable-gpu"])  # fmt: skip
        yield b
        b.close()


@pytest.fixture(scope="module")
def keyed_server(tiny_model_factory):
    """A server on the tiny llama model that needs `API_KEY`, with a 1,024-token KV pool
    (small, so a few long prompts evict); yields its URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "radixlm.launch_server", "--log-level", "warning",
           "--dtype", "float32", "--model", str(tiny_model_factory("llama")),
           "--port", str(port), "--max-total-tokens", "1024", "--api-key", API_KEY]  # fmt: skip
    proc = start_server(cmd, port)
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)
