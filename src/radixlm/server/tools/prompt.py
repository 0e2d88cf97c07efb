"""Chat messages with tool turns -> what the model's chat template gets.

A template that knows tools (it reads `tools`) gets them as `tools=`, assistant calls as
`tool_calls` (arguments as objects, as Hugging Face templates expect) and `tool` turns as
they are. A template without tool support (SmolLM2's, say) gets plain messages instead:
the tools are described in a system message in the Hermes `<tool_call>` format, an
assistant's calls are written into its content in that format, and tool results become
`user` turns inside `<tool_response>` tags. Either way the tools come first in the prompt,
so an agent's system prompt and tools stay one cached prefix from turn to turn.
"""

from __future__ import annotations

import json
from typing import Any

from radixlm.server.errors import ApiError
from radixlm.server.protocol import ChatMessage, ToolCallIn

FALLBACK_INTRO = (
    "You may call one or more functions to assist with the user query. The functions are "
    "described as JSON within <tools></tools> tags:\n<tools>\n"
)
FALLBACK_OUTRO = (
    "\n</tools>\nTo call a function, reply with a JSON object holding its name and arguments "
    "within <tool_call></tool_call> tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


def message_text(m: ChatMessage, i: int) -> str:
    """The text of a message's content: a string, text parts joined, or '' for null."""
    content = m.content
    if isinstance(content, list):
        parts = []
        for part in content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"messages.{i}.content: only text parts are supported",
                               param=f"messages.{i}.content")  # fmt: skip
            parts.append(part["text"])
        return "".join(parts)
    return content or ""


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _template_call(c: ToolCallIn) -> dict[str, Any]:
    fn = {"name": c.function.name, "arguments": _arguments(c.function.arguments)}
    return {"id": c.id, "type": "function", "function": fn}


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages for a template that knows tools."""
    out = []
    for i, m in enumerate(messages):
        d: dict[str, Any] = {"role": m.role, "content": message_text(m, i)}
        if m.name is not None:
            d["name"] = m.name
        if m.tool_calls:
            d["tool_calls"] = [_template_call(c) for c in m.tool_calls]
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        out.append(d)
    return out


def fallback_messages(messages: list[ChatMessage], tools: list[dict[str, Any]]
                      ) -> list[dict[str, Any]]:  # fmt: skip
    """Plain messages for a template without tool support (see the module docstring)."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        text = message_text(m, i)
        if m.role == "assistant" and m.tool_calls:
            calls = [json.dumps({"name": c.function.name,
                                 "arguments": _arguments(c.function.arguments)})
                     for c in m.tool_calls]  # fmt: skip
            text += "".join(f"<tool_call>\n{c}\n</tool_call>" for c in calls)
            out.append({"role": "assistant", "content": text})
        elif m.role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{text}\n</tool_response>"})
        else:
            out.append({"role": m.role, "content": text})
    if tools:
        described = FALLBACK_INTRO + "\n".join(json.dumps(t) for t in tools) + FALLBACK_OUTRO
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{described}"}
        else:
            out.insert(0, {"role": "system", "content": described})
    return out
