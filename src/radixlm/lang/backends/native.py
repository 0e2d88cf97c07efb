"""Backends that speak SGLang's native `/generate` request shape (engine and HTTP).

Subclasses provide `_post(body)` (the JSON response of one /generate body) and
`_post_stream(body)` (its streamed chunks, text cumulative); generation, prefix commits and
select are written once here on top of them.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from typing import Any

from radixlm.lang.backends.base import Backend, Context, GenOutput, RequestRecord
from radixlm.lang.errors import ConstrainedDecodingUnsupported, RequestError, is_constraint_refusal
from radixlm.lang.select import SelectResult, choice_logprobs, logprob_start, pick


class NativeBackend(Backend):
    """A backend driven through `/generate`-shaped bodies; see the module docstring."""

    @abstractmethod
    def _post(self, body: dict[str, Any]) -> Any:
        """The response to one /generate body (a dict, or a list for a list of texts)."""

    @abstractmethod
    def _post_stream(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The streamed responses to one /generate body with `stream: true`."""

    def _record(self, kind: str, prompt: str, result: dict[str, Any]) -> None:
        meta = result.get("meta_info", {})
        self.usage.add(
            RequestRecord(kind, prompt, int(meta.get("prompt_tokens", 0)),
                          int(meta.get("cached_tokens", 0)),
                          int(meta.get("completion_tokens", 0)))
        )  # fmt: skip

    def _call(self, body: dict[str, Any]) -> Any:
        """`_post`; a refusal of regex / json_schema becomes ConstrainedDecodingUnsupported."""
        try:
            return self._post(body)
        except RequestError as e:
            if is_constraint_refusal(e.message):
                raise ConstrainedDecodingUnsupported(e.message, e.status) from e
            raise

    def generate(self, ctx: Context, sampling_params: dict[str, Any]) -> GenOutput:
        result = self._call({"text": ctx.text, "sampling_params": sampling_params})
        _raise_if_aborted(result)
        self._record("gen", ctx.text, result)
        return GenOutput(result["text"], result["meta_info"])

    def generate_stream(self, ctx: Context, sampling_params: dict[str, Any]) -> Iterator[str]:
        body = {"text": ctx.text, "sampling_params": sampling_params, "stream": True}
        seen = ""
        last: dict[str, Any] = {"text": "", "meta_info": {}}
        try:
            for chunk in self._post_stream(body):
                if "error" in chunk:
                    raise RequestError(chunk["error"].get("message", str(chunk["error"])))
                text = chunk["text"]
                if len(text) > len(seen):
                    yield text[len(seen) :]
                    seen = text
                last = chunk
        except RequestError as e:
            if is_constraint_refusal(e.message):
                raise ConstrainedDecodingUnsupported(e.message, e.status) from e
            raise
        _raise_if_aborted(last)
        self._record("gen", ctx.text, last)
        return GenOutput(seen, last["meta_info"])

    def commit_prefix(self, text: str) -> None:
        """Prefill `text` with `max_new_tokens: 0`, so later requests that start with it hit."""
        if text:
            result = self._call({"text": text, "sampling_params": {"max_new_tokens": 0}})
            self._record("commit", text, result)

    def select(self, ctx: Context, choices: list[str], method: str) -> SelectResult:
        """Score every choice in one batched request (see `radixlm.lang.select`)."""
        prompt_tokens = self._prompt_tokens(ctx.text)
        body = {
            "text": [ctx.text + c for c in choices],
            "sampling_params": {"max_new_tokens": 0, "temperature": 0},
            "return_logprob": True,
            "return_text_in_logprobs": True,
            "logprob_start_len": logprob_start(prompt_tokens),
        }
        results = self._call(body)
        token_logprobs = []
        for choice, result in zip(choices, results, strict=True):
            _raise_if_aborted(result)
            self._record("select", ctx.text + choice, result)
            entries = result["meta_info"]["input_token_logprobs"]
            token_logprobs.append(choice_logprobs(entries, choice))
        return pick(choices, token_logprobs, method)

    def _prompt_tokens(self, text: str) -> int:
        """Commit `text` as a prefix and return its length in tokens (0 for empty text)."""
        if not text:
            return 0
        result = self._call({"text": text, "sampling_params": {"max_new_tokens": 0}})
        self._record("commit", text, result)
        return int(result["meta_info"]["prompt_tokens"])


def _raise_if_aborted(result: dict[str, Any]) -> None:
    """Raise RequestError when a result finished by abort (the engine's message kept)."""
    reason = result.get("meta_info", {}).get("finish_reason") or {}
    if isinstance(reason, dict) and reason.get("type") == "abort":
        raise RequestError(f"the request was aborted: {reason.get('message', '')}".strip())
