"""The tool and reasoning side of a chat completion: prompt, constraint, output readers.

The route (`openai_api.chat_completions`) calls these in order: `chat_prompt` renders the
messages (and tools) through the chat template, `tool_sampling` adds the grammar of a
required or named `tool_choice`, and `choice_outputs` makes one `ChoiceOutput` per
choice to read what the model writes.
"""

from __future__ import annotations

from typing import Any

from radixlm.server.chat_output import ChoiceOutput
from radixlm.server.errors import ApiError
from radixlm.server.protocol import ChatCompletionRequest
from radixlm.server.reasoning import ReasoningParser
from radixlm.server.state import ServerState
from radixlm.server.tools import default_parser, make_parser
from radixlm.server.tools.prompt import fallback_messages, template_messages
from radixlm.server.tools.request import ToolRequest
from radixlm.tokenizer import ChatTemplateError


def active_parser(state: ServerState) -> str:
    """The tool-call parser this server uses: the flag's, or the template's own format."""
    name = state.cfg.tool_call_parser
    return default_parser(state.tokenizer.chat_template) if name == "auto" else name


def chat_prompt(state: ServerState, body: ChatCompletionRequest, tools: ToolRequest,
                add_generation_prompt: bool = True) -> list[int]:  # fmt: skip
    """The prompt ids of the messages and tools; 400 when the template cannot make them."""
    tok = state.tokenizer
    kwargs: dict[str, Any] = {}
    if tok.supports_tools:
        messages = template_messages(body.messages)
        if tools.tools:
            kwargs["tools"] = list(tools.tools)
    else:
        messages = fallback_messages(body.messages, list(tools.tools))
    try:
        return tok.apply_chat_template(messages, add_generation_prompt, **kwargs)
    except ChatTemplateError as e:
        raise ApiError(400, str(e), param="messages") from None
    except Exception as e:  # the template itself raised (e.g. roles out of order)
        raise ApiError(400, f"messages: the chat template failed: {e}", param="messages") from None


def tool_sampling(state: ServerState, body: ChatCompletionRequest, tools: ToolRequest
                  ) -> dict[str, Any]:  # fmt: skip
    """Sampling fields the tools add: the grammar of a required or named choice, and
    special tokens kept where the parser's markers are special tokens."""
    extra: dict[str, Any] = {}
    if not tools.parses_calls:
        return extra
    parser = tools.reading_parser(active_parser(state))
    if make_parser(parser).skip_special_tokens is False and body.skip_special_tokens is None:
        extra["skip_special_tokens"] = False
    if tools.constrained:
        fmt = body.response_format
        if body.regex or body.json_schema or body.ebnf or (fmt and fmt.type != "text"):
            raise ApiError(400, f"tool_choice: {tools.choice!r} constrains the output itself; "
                           "drop response_format / regex / json_schema / ebnf",
                           param="tool_choice")  # fmt: skip
        extra["ebnf"] = tools.grammar(parser)
    return extra


def choice_outputs(state: ServerState, body: ChatCompletionRequest, tools: ToolRequest,
                   count: int) -> list[ChoiceOutput]:  # fmt: skip
    """A fresh output reader for each of `count` choices."""
    style = state.cfg.reasoning_parser
    parser = tools.reading_parser(active_parser(state)) if tools.parses_calls else None
    return [
        ChoiceOutput(
            ReasoningParser(style) if style else None,
            body.separate_reasoning,
            make_parser(parser, tools.names) if parser else None,
            tools.parallel,
        )
        for _ in range(count)
    ]
