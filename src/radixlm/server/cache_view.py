"""The live cache view: `GET /cache` (a page), its assets, and `GET /cache/snapshot` (JSON).

The page draws the radix tree as an icicle sized by tokens, the hit rate over time,
recent evictions and per-namespace usage, polling `/cache/snapshot` about once a
second. Every path here sits behind the server's guard like any other route: with
API keys it needs an admin key (the tree shows every tenant's prompts), and it
never shows a cache salt, only its hash.

The snapshot comes from the engine ("cache_snapshot" control call, bounded there:
see `kvcache.snapshot`); this module decodes its labels off the event loop, keeps
the hit-rate history, and answers pollers that come within `REUSE_S` of each other
with the same snapshot, so several open pages cost the engine one walk of the tree.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse

from radixlm.server.errors import ApiError
from radixlm.server.state import ServerState
from radixlm.tokenizer import Tokenizer

router = APIRouter()

STATIC = Path(__file__).parent / "static"
ASSETS = {  # the only files served, by name
    "cache.js": "text/javascript",
    "cache.css": "text/css",
    "d3-7.9.2.min.js": "text/javascript",
    "d3-LICENSE.txt": "text/plain",
}
REUSE_S = 0.25  # pollers within this many seconds share one engine snapshot
HISTORY_POINTS = 900  # hit-rate samples kept (15 minutes at one a second)
MIN_SAMPLE_S = 0.5  # samples closer together than this are not kept
NO_STORE = {"Cache-Control": "no-store"}


class CacheViewState:
    """Per app: the last snapshot (reused for `REUSE_S`) and the hit-rate history."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.last: dict[str, Any] | None = None
        self.last_at = 0.0
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_POINTS)

    async def snapshot(self, state: ServerState) -> dict[str, Any]:
        """The current view: the engine's snapshot with decoded labels and the history.

        Raises ApiError 503 while the engine is not ready.
        """
        async with self.lock:
            if self.last is not None and time.monotonic() - self.last_at < REUSE_S:
                return self.last
            snap = await state.engine().call("cache_snapshot")
            await asyncio.to_thread(decode_labels, state.tokenizer, snap)
            self.sample(snap)
            snap["history"] = list(self.history)
            snap["pool_tokens"] = state.info.max_total_tokens
            self.last, self.last_at = snap, time.monotonic()
            return snap

    def sample(self, snap: dict[str, Any]) -> None:
        """Add one hit-rate point: the cumulative rate and the rate since the last point
        (None when no prompt token was admitted in between). Counters that went down
        (a restarted engine) start the interval from zero."""
        stats, now = snap["stats"], snap["time"]
        prompt, cached = stats["prompt_tokens"], stats["cached_tokens"]
        evicted = snap["evictions"]["total_tokens"]
        prev = self.history[-1] if self.history else None
        if prev is not None and now - prev["t"] < MIN_SAMPLE_S:
            return
        if prev is None or prompt < prev["prompt_tokens"]:
            d_prompt, d_cached = prompt, cached
        else:
            d_prompt, d_cached = prompt - prev["prompt_tokens"], cached - prev["cached_tokens"]
        self.history.append({
            "t": now,
            "prompt_tokens": prompt,
            "cached_tokens": cached,
            "evicted_tokens": evicted,
            "hit_rate": cached / prompt if prompt else None,
            "window_hit_rate": d_cached / d_prompt if d_prompt else None,
        })  # fmt: skip


def decode_labels(tokenizer: Tokenizer, snap: dict[str, Any]) -> None:
    """Replace each `label_ids` in the snapshot (tree nodes and evictions) by its decoded
    text, special tokens shown. CPU work: run it off the event loop."""
    for item in (*snap["nodes"], *snap["evictions"]["recent"]):
        ids = item.pop("label_ids", None)
        if ids is not None:
            item["label"] = tokenizer.decode(ids, skip_special_tokens=False)


def _view(app: FastAPI) -> CacheViewState:
    view = getattr(app.state, "cache_view", None)
    if view is None:
        view = app.state.cache_view = CacheViewState()
    return view


@router.get("/cache", include_in_schema=False)
async def cache_page() -> FileResponse:
    """The live cache view (HTML; its script polls `/cache/snapshot`)."""
    return FileResponse(STATIC / "cache.html", media_type="text/html", headers=NO_STORE)


@router.get("/cache/static/{name}", include_in_schema=False)
async def cache_asset(name: str) -> FileResponse:
    """One of the page's files (`ASSETS`); 404 for any other name."""
    media = ASSETS.get(name)
    if media is None:
        raise ApiError(404, f"no cache view asset named {name!r}", param="name")
    return FileResponse(STATIC / name if not name.startswith("d3") else STATIC / "vendor" / name,
                        media_type=media)  # fmt: skip


@router.get("/cache/snapshot")
async def cache_snapshot(request: Request) -> JSONResponse:
    """The radix tree (bounded: at most a few hundred drawn nodes, the rest merged), its
    totals, per-namespace usage (salts as hashes), recent evictions, the engine's counters,
    and the hit-rate history."""
    snap = await _view(request.app).snapshot(request.app.state.server)
    return JSONResponse(snap, headers=NO_STORE)
