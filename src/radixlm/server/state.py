"""What every route shares: config, model info, tokenizer, the engine client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from radixlm.config import ServerConfig
from radixlm.engine.client import EngineClient
from radixlm.engine.messages import ModelInfo
from radixlm.server.errors import ApiError
from radixlm.server.metrics import ServerMetrics

if TYPE_CHECKING:
    from radixlm.server.supervisor import EngineSupervisor
from radixlm.tokenizer import Tokenizer

T = TypeVar("T")


def max_token_chars(tokenizer: Tokenizer | None) -> int:
    """The most characters one token of `tokenizer` decodes to (1 without a tokenizer)."""
    if tokenizer is None:
        return 1
    hf = tokenizer.hf_tokenizer
    return max((len(hf.convert_tokens_to_string([t])) for t in hf.get_vocab()), default=1)


class ServerState:
    """Lives as long as the server. `client` exists between start-up and shutdown."""

    def __init__(
        self,
        cfg: ServerConfig,
        info: ModelInfo,
        tokenizer: Tokenizer,
        in_addr: str,
        out_addr: str,
        supervisor: EngineSupervisor | None = None,
    ) -> None:
        self.cfg = cfg
        self.info = info
        self.tokenizer = tokenizer
        self.in_addr, self.out_addr = in_addr, out_addr
        self.supervisor = supervisor  # None: an engine nobody watches (tests of the app)
        self.request_stop: Callable[[], None] = lambda: None  # set by whoever runs the server
        self.client: EngineClient | None = None
        self.ready = False
        self.metrics = ServerMetrics(request_log=not cfg.disable_request_log)
        self.started_at = time.time()
        self.model_name = cfg.served_model_name or cfg.engine.load.model or info.model_path
        # Tokenizing and templating run here, never on the event loop (a huge prompt would
        # stall every other request, /health included).
        self._cpu = ThreadPoolExecutor(2, thread_name_prefix="radixlm-tokenize")
        # A text longer than this can never fit: refused before it is tokenized.
        self.max_prompt_chars = info.max_request_tokens * 2 * max_token_chars(tokenizer)

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` run in a tokenizer thread; returns its result (exceptions pass through)."""
        return await asyncio.get_running_loop().run_in_executor(self._cpu, partial(fn, *args))

    def check_text_size(self, chars: int, param: str) -> None:
        """Raise ApiError 400 for a prompt text too long to fit whatever its tokens."""
        if chars > self.max_prompt_chars:
            raise ApiError(400, f"{param}: the text ({chars} characters) is longer than any "
                           f"prompt this server can take ({self.max_request_tokens} tokens)",
                           param=param, code="context_length_exceeded")  # fmt: skip

    @property
    def max_request_tokens(self) -> int:
        """The most tokens (prompt + output) one request may hold."""
        return self.info.max_request_tokens

    def engine(self) -> EngineClient:
        """The engine client; raises ApiError 503 while starting, stopping, or if it died."""
        if not self.ready or self.client is None or not self.engine_alive():
            raise ApiError(503, "the server is not ready", "service_unavailable")
        return self.client

    def engine_alive(self) -> bool:
        return self.supervisor is None or self.supervisor.alive()

    def connect(self, in_addr: str, out_addr: str) -> None:
        """Talk to the engine at these addresses from now on (call on the event loop)."""
        self.in_addr, self.out_addr = in_addr, out_addr
        self.client = EngineClient(in_addr, out_addr, self.metrics.request_done,
                                   report_cached=self.cfg.access.reported_cached)  # fmt: skip
        self.client.start()
        self.ready = True

    async def fail_engine(self, message: str) -> int:
        """The engine is gone: end what was in flight with a 503 and drop the client;
        returns how many requests failed."""
        client, self.client = self.client, None
        if client is None:
            return 0
        failed = client.fail_all(f"the engine failed: {message}", 503)
        await asyncio.sleep(0)  # let the requests' tasks see their errors
        await client.close()
        return failed

    def check_model(self, name: str | None) -> None:
        """Raise ApiError 404 unless `name` is this server's model (or its path, or unset)."""
        if name is None or name in (self.model_name, self.info.model_path, "default"):
            return
        if Path(name).name == Path(self.info.model_path).name:
            return
        raise ApiError(
            404,
            f"the model {name!r} does not exist; this server serves {self.model_name!r}",
            "invalid_request_error",
            param="model",
            code="model_not_found",
        )

    def check_length(self, ids: list[int], max_new_tokens: int, param: str) -> None:
        """Raise ApiError 400 for an empty prompt or one that can never fit with its output."""
        if not ids:
            raise ApiError(400, f"{param}: the prompt is empty", param=param)
        need = len(ids) + max_new_tokens
        if need > self.max_request_tokens:
            raise ApiError(
                400,
                f"{param}: the prompt ({len(ids)} tokens) plus max new tokens "
                f"({max_new_tokens}) is {need} tokens, more than this server's limit of "
                f"{self.max_request_tokens}",
                param=param,
                code="context_length_exceeded",
            )
