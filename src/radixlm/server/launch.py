"""Start the HTTP server and its engine process (`radixlm serve`, `-m radixlm.launch_server`).

The engine (model, scheduler, KV cache) runs in a child process started with
multiprocessing's spawn context; this process runs FastAPI under uvicorn,
tokenizes prompts and applies chat templates, and talks to the engine over two
ZeroMQ ipc sockets in a private temporary directory. Ctrl-C or SIGTERM stops
uvicorn, then the engine; the engine also exits by itself if this process dies.
"""

from __future__ import annotations

# ruff: noqa: E402 - the OpenMP policy must be set before anything imports torch
from radixlm.threads import HTTP_TORCH_THREADS, http_process_env

http_process_env()  # see radixlm.threads

import logging
import shutil
import signal
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from radixlm.args import build_server_parser, server_config_from_args
from radixlm.config import ServerConfig
from radixlm.engine.messages import ModelInfo
from radixlm.server.supervisor import EngineStartError, EngineSupervisor

log = logging.getLogger("radixlm.server")



def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through run_server's cleanup


def banner(cfg: ServerConfig, info: ModelInfo) -> str:
    """The start-up line: where the server listens, the model, dtype and KV capacity."""
    return (
        f"radixlm: serving {info.model_path} ({info.architecture}, {info.dtype} on "
        f"{info.device}, {info.weights_mib:.1f} MiB of weights, KV pool "
        f"{info.max_total_tokens} tokens, context {info.context_length}) "
        f"at http://{cfg.host}:{cfg.port}"
    )


def run_server(cfg: ServerConfig) -> int:
    """Serve until interrupted; return the exit status (1 when the model cannot be loaded,
    or when the engine died with no restart left)."""
    import torch
    import uvicorn

    from radixlm.loader import ModelNotFoundError, resolve_model_path
    from radixlm.server.http_server import create_app
    from radixlm.server.state import ServerState
    from radixlm.tokenizer import load_tokenizer

    torch.set_num_threads(HTTP_TORCH_THREADS)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it: this handler turns that into
    # SystemExit so the engine is stopped and the socket directory removed.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        model_path = resolve_model_path(cfg.engine.load.model)
    except ModelNotFoundError as e:
        print(f"radixlm: error: {e}", file=sys.stderr)
        return 1
    ipc_dir = Path(tempfile.mkdtemp(prefix="radixlm-"))
    supervisor = EngineSupervisor(cfg, ipc_dir)
    try:
        with ThreadPoolExecutor(1) as pool:
            ready = pool.submit(supervisor.start)
            tokenizer = load_tokenizer(model_path)  # while the engine loads the model
            try:
                info = ready.result()
            except EngineStartError as e:
                print(f"radixlm: error: {e}", file=sys.stderr)
                return 1
        state = ServerState(cfg, info, tokenizer, supervisor.in_addr, supervisor.out_addr,
                            supervisor=supervisor)  # fmt: skip
        print(banner(cfg, info), file=sys.stderr, flush=True)
        # SIGTERM drains: requests in flight get `drain_timeout` seconds, then are cut.
        uv = uvicorn.Server(uvicorn.Config(
            create_app(state), host=cfg.host, port=cfg.port, log_level=cfg.log_level,
            timeout_graceful_shutdown=cfg.drain_timeout,
        ))  # fmt: skip
        state.request_stop = lambda: setattr(uv, "should_exit", True)
        uv.run()
        return supervisor.exit_code
    except KeyboardInterrupt:
        return 130
    finally:
        supervisor.stop()
        shutil.rmtree(ipc_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Parse server flags and serve; return the exit status."""
    parser = build_server_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(
        level=ns.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = server_config_from_args(ns)
    except ValueError as e:
        parser.error(str(e))
    return run_server(cfg)


if __name__ == "__main__":
    sys.exit(main())
