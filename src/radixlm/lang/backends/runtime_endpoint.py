"""Programs on a running server through SGLang's native HTTP API (radixlm or SGLang)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cached_property
from typing import Any

import httpx

from radixlm.lang.backends.native import NativeBackend
from radixlm.lang.chat_template import (
    ChatTemplate,
    resolve_template,
    template_for_model_path,
)
from radixlm.lang.errors import RequestError


def _error_message(response: httpx.Response) -> str:
    """The server's message: OpenAI's `error.message`, SGLang's `message`, or the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
        if "message" in body:
            return str(body["message"])
    return json.dumps(body)


class RuntimeEndpoint(NativeBackend):
    """Run programs on the server at `base_url` (e.g. "http://127.0.0.1:30000").

    The chat template: `chat_template` when given (a ChatTemplate or a built-in name);
    else the server's Jinja template when `/get_model_info` sends one (radixlm does); else
    the built-in one its `model_path` suggests (as SGLang's frontend chooses). `api_key`
    is sent as a bearer token. Safe to share between threads.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        chat_template: ChatTemplate | str | None = None,
        timeout: float = 600.0,
        record_requests: bool = False,
    ) -> None:
        super().__init__(record_requests)
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self._template_spec = chat_template

    @cached_property
    def model_info(self) -> dict[str, Any]:
        """The server's `/get_model_info` answer (fetched once)."""
        return self._get("/get_model_info")

    @cached_property
    def chat_template(self) -> ChatTemplate:
        return resolve_template(self._template_spec, self._server_template)

    def _server_template(self) -> ChatTemplate:
        info = self.model_info
        source = info.get("chat_template")
        if isinstance(source, str) and source:
            return ChatTemplate.from_jinja(source, eos_token=info.get("eos_token") or "")
        return template_for_model_path(str(info.get("model_path", "")))

    def get_server_info(self) -> dict[str, Any]:
        """The server's `/get_server_info` (configuration and live cache statistics)."""
        return self._get("/get_server_info")

    def flush_cache(self) -> None:
        """Empty the server's prefix cache; raises RequestError while requests run."""
        self._check(self._client.post("/flush_cache"))

    def _get(self, path: str) -> dict[str, Any]:
        return self._check(self._client.get(path)).json()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code != 200:
            raise RequestError(_error_message(response), response.status_code)
        return response

    def _post(self, body: dict[str, Any]) -> Any:
        try:
            response = self._client.post("/generate", json=body)
        except httpx.HTTPError as e:
            raise RequestError(f"{self.base_url}: {e}") from e
        return self._check(response).json()

    def _post_stream(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        try:
            with self._client.stream("POST", "/generate", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    self._check(response)
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[len("data:") :].strip()
                    if data == "[DONE]":
                        return
                    yield json.loads(data)
        except httpx.HTTPError as e:
            raise RequestError(f"{self.base_url}: {e}") from e

    def close(self) -> None:
        self._client.close()
