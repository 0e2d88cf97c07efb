"""Start the HTTP server and its engine process (`radixlm serve`, `-m radixlm.launch_server`).

The engine (model, scheduler, KV cache) runs in a child process started with
multiprocessing's spawn context; this process runs FastAPI under uvicorn,
tokenizes prompts and applies chat templates, and talks to the engine over two
ZeroMQ ipc sockets in a private temporary directory. Ctrl-C or SIGTERM stops
uvicorn, then the engine; the engine also exits by itself if this process dies.
"""

from __future__ import annotations

import os

# Read by OpenMP when torch loads; see radixlm.cli.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging
import multiprocessing as mp
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from radixlm.args import build_server_parser, server_config_from_args
from radixlm.config import ServerConfig
from radixlm.engine.messages import ModelInfo

log = logging.getLogger("radixlm.server")

HTTP_TORCH_THREADS = 1  # this process runs no model; it must not compete with the engine


class EngineStartError(RuntimeError):
    pass


def spawn_engine(cfg: ServerConfig, ipc_dir: Path) -> tuple[mp.process.BaseProcess, Any, str, str]:
    """Start the engine process (it loads the model in the background).

    Returns (process, the pipe its ReadyMsg arrives on, requests address, outputs address).
    """
    from radixlm.engine.process import run_engine_process

    in_addr, out_addr = f"ipc://{ipc_dir}/requests", f"ipc://{ipc_dir}/outputs"
    ctx = mp.get_context("spawn")
    recv_conn, send_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=run_engine_process,
        args=(cfg.engine, in_addr, out_addr, send_conn, cfg.log_level),
        name="radixlm-engine",
        daemon=True,
    )
    proc.start()
    send_conn.close()
    return proc, recv_conn, in_addr, out_addr


def wait_ready(proc: mp.process.BaseProcess, conn: Any) -> ModelInfo:
    """Wait until the engine has loaded the model; return its model info.

    Raises EngineStartError with the engine's message when loading fails.
    """
    while not conn.poll(0.2):
        if not proc.is_alive():
            raise EngineStartError(f"the engine process exited with code {proc.exitcode}")
    ready = conn.recv()
    if ready.error is not None or ready.info is None:
        raise EngineStartError(ready.error or "the engine sent no model info")
    return ready.info


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through run_server's cleanup


def stop_engine(proc: mp.process.BaseProcess, timeout: float = 3.0) -> None:
    """Wait for the engine to exit (it was told to); terminate, then kill, if it lingers."""
    proc.join(timeout)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()


def banner(cfg: ServerConfig, info: ModelInfo) -> str:
    """The start-up line: where the server listens, the model, dtype and KV capacity."""
    return (
        f"radixlm: serving {info.model_path} ({info.architecture}, {info.dtype} on "
        f"{info.device}, {info.weights_mib:.1f} MiB of weights, KV pool "
        f"{info.max_total_tokens} tokens, context {info.context_length}) "
        f"at http://{cfg.host}:{cfg.port}"
    )


def run_server(cfg: ServerConfig) -> int:
    """Serve until interrupted; return the exit status (1 when the model cannot be loaded)."""
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
    proc = None
    try:
        proc, conn, in_addr, out_addr = spawn_engine(cfg, ipc_dir)
        tokenizer = load_tokenizer(model_path)  # while the engine loads the model
        try:
            info = wait_ready(proc, conn)
        except EngineStartError as e:
            print(f"radixlm: error: {e}", file=sys.stderr)
            return 1
        state = ServerState(cfg, info, tokenizer, in_addr, out_addr, engine_proc=proc)
        print(banner(cfg, info), file=sys.stderr, flush=True)
        app = create_app(state)
        uv = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level)
        uvicorn.Server(uv).run()
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        if proc is not None:
            stop_engine(proc)
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
