"""`radixlm` console entry point: parse flags, dispatch to a subcommand.

`radixlm serve` runs the HTTP server (see `radixlm.server.launch`; with `--dp N`, N of
them behind a router, see `radixlm.scaleout`); `radixlm router` runs a router in front
of workers elsewhere; `radixlm chat`
and `radixlm generate` talk to the model in the terminal; `radixlm bench` measures a
server (see `radixlm.bench`).
"""

from __future__ import annotations

import sys

if "serve" in sys.argv[1:4]:
    from radixlm.threads import http_process_env

    http_process_env()  # before torch loads; see radixlm.threads

import argparse
import logging
from collections.abc import Callable
from typing import TypeVar

from radixlm.args import (
    bench_config_from_args,
    build_parser,
    chat_config_from_args,
    dp_config_from_args,
    router_config_from_args,
    server_config_from_args,
)

T = TypeVar("T")


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the process exit status."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(
        level=ns.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    def config(from_args: Callable[[argparse.Namespace], T]) -> T:
        try:
            return from_args(ns)
        except ValueError as e:
            parser.error(str(e))  # exits

    if ns.command == "serve":
        from radixlm.server.launch import run_server

        cfg = config(server_config_from_args)  # checks the flags every worker gets
        if cfg.engine.load.node_rank > 0:  # tensor-parallel ranks only; node 0 serves
            from radixlm.distributed.launch import run_node

            return run_node(cfg.engine)
        if ns.dp > 1:
            from radixlm.scaleout.launcher import run_dp

            args = sys.argv[1:] if argv is None else argv
            serve_argv = args[args.index("serve") + 1 :]
            return run_dp(config(lambda n: dp_config_from_args(n, serve_argv)))
        return run_server(cfg)
    if ns.command == "router":
        from radixlm.scaleout.launcher import run_router

        return run_router(config(router_config_from_args))
    if ns.command in ("chat", "generate"):
        from radixlm.chat import run_chat
        from radixlm.loader import ModelNotFoundError

        try:
            return run_chat(config(chat_config_from_args))
        except (ModelNotFoundError, ValueError) as e:
            print(f"radixlm: error: {e}", file=sys.stderr)
            return 1
    if ns.command == "bench":
        from radixlm.bench.main import run_bench

        return run_bench(config(bench_config_from_args))
    if ns.command in ("replay", "doctor"):
        from radixlm.args import doctor_config_from_args, replay_config_from_args
        from radixlm.doctor.main import run_doctor, run_replay

        if ns.command == "replay":
            return run_replay(config(replay_config_from_args))
        return run_doctor(config(doctor_config_from_args))
    parser.error(f"unknown command {ns.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
