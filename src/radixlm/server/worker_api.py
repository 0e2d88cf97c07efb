"""The routes a router polls on each worker: /version, /get_load, /loads, /v1/loads.

Cache-aware routers (smg, sglang-router, vllm-router) register a worker by probing its
version and model, then poll its load to balance between workers. The shapes follow
SGLang's: `/get_load` is a list with one entry per data-parallel rank, `/v1/loads` (and
`/loads`) an object whose `loads` list holds one entry per rank. A radixlm server is one
engine, so it always reports one rank (rank 0) and `dp_size` 1: a router that fronts N
radixlm workers sees N single-rank workers and must not send a `data_parallel_rank`.
"""

from __future__ import annotations

import datetime
from typing import Any

from fastapi import APIRouter, Query, Request

import radixlm
from radixlm.server.errors import ApiError
from radixlm.server.state import ServerState

router = APIRouter()

# What `include` may name on /v1/loads; "all" is every section.
LOAD_SECTIONS = ("core", "memory", "queues", "all")


def parallel_sizes(state: ServerState) -> dict[str, int]:
    """`dp_size` and `tp_size` of this server: one engine (dp 1) over `--tp` ranks."""
    return {"dp_size": 1, "tp_size": state.cfg.engine.load.tp_size}


def _state(request: Request) -> ServerState:
    return request.app.state.server


def core_load(stats: dict[str, Any]) -> dict[str, Any]:
    """One rank's load in SGLang's `v1_loads` shape, from the engine's `get_stats` result.

    `num_used_tokens` counts the slots requests hold (not free, not evictable cache);
    `token_usage` is that over `max_total_num_tokens`.
    """
    total = int(stats["max_total_tokens"])
    usage = float(stats["token_usage"])
    running, waiting = int(stats["num_running_reqs"]), int(stats["num_waiting_reqs"])
    return {
        "dp_rank": 0,
        "num_running_reqs": running,
        "num_waiting_reqs": waiting,
        "num_total_reqs": running + waiting,
        "num_used_tokens": round(usage * total),
        "max_total_num_tokens": total,
        "token_usage": usage,
        "cache_hit_rate": float(stats["cache_hit_rate"]),
        "utilization": usage,
    }


def _sections(include: str) -> set[str]:
    """The sections named by a comma-separated `include`; raises ApiError 400 on an unknown one."""
    names = {s.strip() for s in include.split(",") if s.strip()} or {"core"}
    unknown = sorted(names - set(LOAD_SECTIONS))
    if unknown:
        raise ApiError(400, f"include: unknown section(s) {unknown}; known: "
                       f"{list(LOAD_SECTIONS)}", param="include")  # fmt: skip
    return set(LOAD_SECTIONS) if "all" in names else names | {"core"}


@router.get("/version")
async def version() -> dict[str, str]:
    """The server's version (routers read it when a worker registers)."""
    return {"version": radixlm.__version__}


@router.get("/get_load")
async def get_load(request: Request) -> list[dict[str, Any]]:
    """SGLang's older load route: one entry per rank with `num_reqs`, `num_waiting_reqs`
    and `num_tokens` (tokens held by requests)."""
    load = core_load(await _state(request).engine().call("get_stats"))
    return [{"dp_rank": 0, "num_reqs": load["num_running_reqs"],
             "num_waiting_reqs": load["num_waiting_reqs"],
             "num_tokens": load["num_used_tokens"]}]  # fmt: skip


@router.get("/loads")
@router.get("/v1/loads")
async def loads(request: Request, include: str = Query("core")) -> dict[str, Any]:
    """SGLang's `v1_loads`: timestamp, version, and one load entry per rank (here one).

    `include` (comma-separated: core, memory, queues, all) adds sections to each entry.
    """
    sections = _sections(include)
    stats = await _state(request).engine().call("get_stats")
    load = core_load(stats)
    if "memory" in sections:
        load["memory"] = {"cached_tree_tokens": int(stats["cached_tree_tokens"]),
                          "max_total_num_tokens": load["max_total_num_tokens"]}  # fmt: skip
    if "queues" in sections:
        load["queues"] = {"waiting": load["num_waiting_reqs"],
                          "running": load["num_running_reqs"]}  # fmt: skip
    now = datetime.datetime.now(datetime.UTC).isoformat()
    aggregate = {k: load[k] for k in ("num_running_reqs", "num_waiting_reqs", "num_total_reqs",
                                      "num_used_tokens", "token_usage")}  # fmt: skip
    return {"timestamp": now, "version": radixlm.__version__, "dp_rank_count": 1,
            "loads": [load], "aggregate": aggregate}  # fmt: skip
