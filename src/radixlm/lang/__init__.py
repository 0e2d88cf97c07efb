"""radixlm's frontend language: structured LM programs on an engine or a server.

    import radixlm.lang as rl

    @rl.function
    def few_shot(s, question):
        s += "Q: What is 2 + 2?\nA: 4\n"
        s += "Q: " + question + "\nA:" + rl.gen("answer", max_tokens=16, stop="\n")

    backend = rl.RuntimeEndpoint("http://127.0.0.1:30000")
    state = few_shot.run(question="What is 3 + 5?", backend=backend)
    print(state["answer"])

See docs/lang.md for the language, the backends and how programs use the cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from radixlm.lang.api import (
    assistant,
    assistant_begin,
    assistant_end,
    gen,
    get_default_backend,
    select,
    set_default_backend,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
)
from radixlm.lang.backends.base import Backend, Context, GenOutput, RequestRecord, Usage
from radixlm.lang.backends.runtime_endpoint import RuntimeEndpoint
from radixlm.lang.chat_template import ChatTemplate, named_template
from radixlm.lang.errors import ConstrainedDecodingUnsupported, ProgramError, RequestError
from radixlm.lang.program import Function, function
from radixlm.lang.state import ForkGroup, ProgramState, fork, join

if TYPE_CHECKING:
    from radixlm.lang.backends.engine import EngineBackend
    from radixlm.lang.backends.openai import OpenAI

__all__ = [
    "Backend", "ChatTemplate", "ConstrainedDecodingUnsupported", "Context", "EngineBackend",
    "ForkGroup", "Function", "GenOutput", "OpenAI", "ProgramError", "ProgramState",
    "RequestError", "RequestRecord", "RuntimeEndpoint", "Usage", "assistant",
    "assistant_begin", "assistant_end", "fork", "function", "gen", "get_default_backend",
    "join", "named_template", "select", "set_default_backend", "system", "system_begin",
    "system_end", "user", "user_begin", "user_end",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    # Lazy: the engine backend imports torch, the OpenAI one the openai package.
    if name == "EngineBackend":
        from radixlm.lang.backends.engine import EngineBackend

        return EngineBackend
    if name == "OpenAI":
        from radixlm.lang.backends.openai import OpenAI

        return OpenAI
    raise AttributeError(name)
