"""Programs on an in-process `radixlm.Engine` (no server, no HTTP)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import Any

from radixlm.lang.backends.native import NativeBackend
from radixlm.lang.chat_template import ChatTemplate, named_template, resolve_template
from radixlm.lang.errors import RequestError

_OPTIONS = ("return_logprob", "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs")


class EngineBackend(NativeBackend):
    """Run programs on `engine` (a `radixlm.Engine`, or a model name to start one with).

    An engine started here (from a model name and `engine_options`) is shut down by
    `close()`; one passed in belongs to the caller. The chat template is derived from the
    model's own unless `chat_template` (a ChatTemplate or a built-in name) is given.
    """

    def __init__(
        self,
        engine: Any,
        chat_template: ChatTemplate | str | None = None,
        record_requests: bool = False,
        **engine_options: Any,
    ) -> None:
        super().__init__(record_requests)
        self._owned = isinstance(engine, str)
        if self._owned:
            from radixlm.engine.engine import Engine

            engine = Engine(model=engine, **engine_options)
        self.engine = engine
        self._template_spec = chat_template

    @cached_property
    def chat_template(self) -> ChatTemplate:
        return resolve_template(self._template_spec, self._model_template)

    def _model_template(self) -> ChatTemplate:
        tokenizer = self.engine.tokenizer
        source = tokenizer.chat_template
        if source is None:
            return named_template("default")
        eos = tokenizer.hf_tokenizer.eos_token or ""
        return ChatTemplate.from_jinja(source, eos_token=eos)

    def _post(self, body: dict[str, Any]) -> Any:
        options = {k: body[k] for k in _OPTIONS if k in body}
        try:
            return self.engine.generate(body["text"], body.get("sampling_params"), **options)
        except (ValueError, RuntimeError) as e:
            raise RequestError(str(e)) from e

    def _post_stream(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        try:
            yield from self.engine.generate_stream(body["text"], body.get("sampling_params"))
        except (ValueError, RuntimeError) as e:
            raise RequestError(str(e)) from e

    def close(self) -> None:
        if self._owned:
            self.engine.shutdown()
