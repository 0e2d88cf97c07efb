"""HTTP backends: radixlm's (SGLang's) native /generate and the OpenAI completion APIs.

Each sends one prompt with greedy sampling, `ignore_eos` and `max_tokens = output_len`
(so every system computes the same number of tokens), streams the answer to time every
chunk, and reads the prompt and cached token counts the server reports: `meta_info` on
/generate, `usage.prompt_tokens_details.cached_tokens` on the OpenAI routes (asked for
with `stream_options.include_usage`), or llama.cpp's `timings.cache_n`. They reach the
server over HTTP only.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx

from radixlm.bench.metrics import RequestResult
from radixlm.bench.workload import Part, prompt_ids

Encode = Callable[[str], list[int]]
Decode = Callable[[Sequence[int]], str]


async def _sse(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream, up to `data: [DONE]`."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


class HttpBackend:
    """What the HTTP backends share: the client, the server's counters, warm-up, closing."""

    kind = "http"

    def __init__(self, base_url: str, model: str | None, encode: Encode, decode: Decode) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.encode, self.decode = encode, decode
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        timeout = httpx.Timeout(None, connect=30.0)
        self.client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, limits=limits)

    async def model_name(self) -> str:
        """The model named in requests: the one given, else the server's first /v1/models id."""
        if self.model is None:
            res = await self.client.get("/v1/models")
            res.raise_for_status()
            self.model = res.json()["data"][0]["id"]
        return self.model

    async def server_counters(self) -> dict[str, int] | None:
        """The server's cumulative prompt and cached token counts (radixlm), else None."""
        try:
            res = await self.client.get("/get_server_info")
            info = res.json() if res.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            return None
        if not {"prompt_tokens", "cached_tokens"} <= info.keys():
            return None
        return {"prompt_tokens": int(info["prompt_tokens"]),
                "cached_tokens": int(info["cached_tokens"])}  # fmt: skip

    async def warmup(self, ids: Sequence[int]) -> str | None:
        """One short request, then empty the server's prefix cache, so that no earlier
        run's prompts are cached. Returns how it was emptied (`flush_cache`), or None
        where the server offers no way (then a cached prefix may be an earlier run's)."""
        res = await self.generate(-1, (Part("user", tuple(ids)),), 2)
        if res.error is not None:
            raise RuntimeError(f"warm-up request failed: {res.error}")
        return await self.flush_cache()

    async def flush_cache(self) -> str | None:
        """Empty the server's prefix cache by the first route it answers with a 2xx:
        radixlm's and SGLang's /flush_cache, vLLM's /reset_prefix_cache (served with
        VLLM_SERVER_DEV_MODE=1), or erasing each of llama-server's slots. Returns the
        route used, or None."""
        for route in ("/flush_cache", "/reset_prefix_cache"):
            with contextlib.suppress(httpx.HTTPError):
                if (await self.client.post(route)).is_success:
                    return route
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
            slots = (await self.client.get("/slots")).json()
            erased = [await self.client.post(f"/slots/{s['id']}", params={"action": "erase"})
                      for s in slots]  # fmt: skip
            if erased and all(r.is_success for r in erased):
                return "/slots?action=erase"
        return None

    async def aclose(self) -> None:
        await self.client.aclose()

    async def generate(self, index: int, parts: Sequence[Part], output_len: int) -> RequestResult:
        raise NotImplementedError

    async def _stream(
        self, index: int, path: str, body: dict[str, Any], prompt_len: int, chunk: Callable
    ) -> RequestResult:
        """POST a streaming `body`; `chunk(obj, result)` folds each event into the result."""
        res = RequestResult(index, prompt_len, None, [], "", time.perf_counter(), 0.0)
        try:
            async with self.client.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    res.error = f"HTTP {response.status_code}: {response.text[:300]}"
                async for obj in _sse(response) if res.error is None else _nothing():
                    if "error" in obj and not obj.get("choices"):
                        res.error = str(obj["error"])[:300]
                        break
                    chunk(obj, res, time.perf_counter())
        except httpx.HTTPError as e:
            res.error = f"{type(e).__name__}: {e}"
        res.end = time.perf_counter()
        return res


async def _nothing() -> AsyncIterator[dict[str, Any]]:
    return
    yield {}


def _add_chunk(res: RequestResult, now: float, tokens: int) -> None:
    if tokens > 0:
        res.chunk_times.append(now)
        res.chunk_tokens.append(tokens)


class NativeBackend(HttpBackend):
    """SGLang's native `POST /generate` with `input_ids`, streamed (radixlm, SGLang)."""

    name = "native"

    async def generate(self, index: int, parts: Sequence[Part], output_len: int) -> RequestResult:
        ids = prompt_ids(parts)
        body = {"input_ids": ids, "stream": True,
                "sampling_params": {"max_new_tokens": output_len, "temperature": 0,
                                    "ignore_eos": True}}  # fmt: skip

        def chunk(obj: dict[str, Any], res: RequestResult, now: float) -> None:
            meta = obj.get("meta_info", {})
            # completion_tokens is cumulative whether or not output_ids are
            _add_chunk(res, now, int(meta.get("completion_tokens", 0)) - res.output_tokens)
            res.text = obj.get("text", res.text)
            res.output_ids = list(obj.get("output_ids", res.output_ids))
            res.prompt_tokens = int(meta.get("prompt_tokens", res.prompt_tokens))
            if meta.get("cached_tokens") is not None:
                res.cached_tokens = int(meta["cached_tokens"])

        return await self._stream(index, "/generate", body, len(ids), chunk)


def _usage(obj: dict[str, Any], res: RequestResult) -> None:
    """Fold OpenAI usage (or llama.cpp timings) into `res`."""
    usage = obj.get("usage") or {}
    if usage.get("prompt_tokens") is not None:
        res.prompt_tokens = int(usage["prompt_tokens"])
    details = usage.get("prompt_tokens_details") or {}
    if details.get("cached_tokens") is not None:
        res.cached_tokens = int(details["cached_tokens"])
    elif (obj.get("timings") or {}).get("cache_n") is not None:  # llama.cpp's llama-server
        res.cached_tokens = int(obj["timings"]["cache_n"])
    done = usage.get("completion_tokens")
    if done is None or not res.chunk_tokens:
        return
    # The server's count wins: chunks that held several tokens, or a last chunk with none.
    if int(done) > res.output_tokens:
        res.chunk_tokens[-1] += int(done) - res.output_tokens
    while res.output_tokens > int(done) and res.chunk_tokens:
        res.chunk_tokens[-1] -= 1
        if res.chunk_tokens[-1] == 0:
            res.chunk_tokens.pop()
            res.chunk_times.pop()


class OpenAICompletionsBackend(HttpBackend):
    """`POST /v1/completions` with the prompt as a list of token ids, streamed."""

    name = "openai"
    path = "/v1/completions"

    def _body(self, parts: Sequence[Part]) -> dict[str, Any]:
        return {"prompt": prompt_ids(parts)}

    def _delta(self, choice: dict[str, Any]) -> str | None:
        """The text a stream choice adds, or None for a chunk that carries no token."""
        return choice.get("text", "")

    async def generate(self, index: int, parts: Sequence[Part], output_len: int) -> RequestResult:
        body = {"model": await self.model_name(), **self._body(parts), "max_tokens": output_len,
                "temperature": 0, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip

        def chunk(obj: dict[str, Any], res: RequestResult, now: float) -> None:
            for choice in obj.get("choices") or []:
                delta = self._delta(choice)
                if delta is not None:
                    res.text += delta
                    _add_chunk(res, now, 1)
            _usage(obj, res)

        res = await self._stream(index, self.path, body, len(prompt_ids(parts)), chunk)
        res.output_ids = self.encode(res.text)
        return res


class OpenAIChatBackend(OpenAICompletionsBackend):
    """`POST /v1/chat/completions`: each run of same-role parts becomes one message's text.

    The server applies its chat template, so the prompt it counts is longer than the
    workload's parts."""

    name = "openai-chat"
    path = "/v1/chat/completions"

    def _body(self, parts: Sequence[Part]) -> dict[str, Any]:
        messages: list[dict[str, Any]] = []
        for part in parts:
            if messages and messages[-1]["role"] == part.role:
                messages[-1]["ids"] += part.ids
            else:
                messages.append({"role": part.role, "ids": part.ids})
        return {"messages": [{"role": m["role"], "content": self.decode(m["ids"])}
                             for m in messages]}  # fmt: skip

    def _delta(self, choice: dict[str, Any]) -> str | None:
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if content is None or (content == "" and "role" in delta):
            return None  # the role announcement, or the finish chunk
        return content


HTTP_BACKENDS: dict[str, type[HttpBackend]] = {
    "native": NativeBackend,
    "openai": OpenAICompletionsBackend,
    "openai-chat": OpenAIChatBackend,
}
