"""OpenAI tool calling: parsers that find calls in model output, and `tool_choice` grammars.

`make_parser(name, tool_names)` gives a fresh parser for one output; `default_parser`
picks one from a chat template. See `docs/tools.md`.
"""

from __future__ import annotations

from collections.abc import Collection

from radixlm.config import TOOL_CALL_PARSERS
from radixlm.server.tools.base import ToolParser
from radixlm.server.tools.calls import (
    ArgsDelta,
    CallHeader,
    Event,
    ParsedOutput,
    TextDelta,
    ToolCall,
    collect,
)
from radixlm.server.tools.formats import HermesParser, Llama3JsonParser, MistralParser
from radixlm.server.tools.pythonic import PythonicParser

PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesParser,
    "qwen": HermesParser,
    "llama3": Llama3JsonParser,
    "mistral": MistralParser,
    "pythonic": PythonicParser,
}
TOOL_PARSER_CHOICES = TOOL_CALL_PARSERS  # "auto": from the chat template
assert set(TOOL_PARSER_CHOICES) == {"auto", *PARSERS}

__all__ = [
    "PARSERS", "TOOL_PARSER_CHOICES", "ArgsDelta", "CallHeader", "Event", "ParsedOutput",
    "TextDelta", "ToolCall", "ToolParser", "collect", "default_parser", "make_parser",
]  # fmt: skip


def default_parser(chat_template: str | None) -> str:
    """The parser a chat template's own tool format asks for; `hermes` when it shows none
    (radixlm then describes the tools in that format itself, see `chat_tools.py`)."""
    template = chat_template or ""
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<|python_tag|>" in template or ("<|eot_id|>" in template and '"parameters"' in template):
        return "llama3"
    if "func_name1(" in template:
        return "pythonic"
    return "hermes"


def make_parser(name: str, tool_names: Collection[str] | None = None) -> ToolParser:
    """A fresh parser called `name` (a PARSERS key) for one output; calls must name one of
    `tool_names` (None: any name)."""
    try:
        cls = PARSERS[name]
    except KeyError:
        raise ValueError(f"unknown tool-call parser {name!r}; choose from "
                         f"{', '.join(PARSERS)}") from None  # fmt: skip
    return cls(tool_names)
