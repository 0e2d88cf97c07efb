"""`radixlm` console entry point: parse flags, dispatch to a subcommand."""

from __future__ import annotations

import logging
import sys

from radixlm.server.args import build_parser, chat_config_from_args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(
        level=ns.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if ns.command in ("serve", "generate"):
        try:
            cfg = chat_config_from_args(ns)
        except ValueError as e:
            parser.error(str(e))
        from radixlm.chat import run_chat
        from radixlm.loader import ModelNotFoundError

        try:
            return run_chat(cfg)
        except (ModelNotFoundError, ValueError) as e:
            print(f"radixlm: error: {e}", file=sys.stderr)
            return 1
    parser.error(f"unknown command {ns.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
