"""A chat request's tools: checked once, and `tool_choice` turned into a grammar.

`ToolRequest.from_body` validates `tools`, `tool_choice` and the history's tool turns
(400 naming the field). `grammar()` is the EBNF that `required` and a named choice
decode under: the calls in the format the parser reads, each an object whose `name` is
a listed tool and whose arguments follow that tool's parameter schema, so the arguments
always parse and validate (unless `max_tokens` cuts them short).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from radixlm.grammar import GrammarError
from radixlm.server.errors import ApiError
from radixlm.server.protocol import ChatCompletionRequest, NamedToolChoice

NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function names
NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}

# How the constrained calls are written, per parser: (before each call, between calls,
# after the last, the arguments key). Pythonic output is constrained to the Hermes form
# (and read with the Hermes parser): its argument values are Python, not JSON.
LAYOUTS = {
    "hermes": ("<tool_call>\n", "\n</tool_call>\n<tool_call>\n", "\n</tool_call>", "arguments"),
    "llama3": ("", "; ", "", "parameters"),
    "mistral": ("[TOOL_CALLS][", ", ", "]", "arguments"),
}
CONSTRAINED_PARSER = {"qwen": "hermes", "pythonic": "hermes"}


@dataclass(frozen=True)
class ToolRequest:
    """The tools of one chat request. `choice` is none / auto / required / named;
    `named` the one function a named choice forces."""

    tools: tuple[dict[str, Any], ...]  # OpenAI tool objects, as the template gets them
    schemas: dict[str, dict[str, Any]]  # name -> parameter schema
    choice: str
    named: str | None
    parallel: bool

    @property
    def names(self) -> list[str]:
        return list(self.schemas)

    @property
    def parses_calls(self) -> bool:
        """Whether the output is read for calls (not for `none`, nor without tools)."""
        return bool(self.schemas) and self.choice != "none"

    @property
    def constrained(self) -> bool:
        return self.choice in ("required", "named")

    @staticmethod
    def from_body(body: ChatCompletionRequest) -> ToolRequest:
        """The checked tools of `body`; raises ApiError 400 naming the bad field."""
        schemas: dict[str, dict[str, Any]] = {}
        tools = []
        for i, tool in enumerate(body.tools or []):
            fn = tool.function
            where = f"tools.{i}.function"
            if not NAME_RE.fullmatch(fn.name):
                raise ApiError(400, f"{where}.name: {fn.name!r} is not a valid function name "
                               "(1-64 letters, digits, _ or -)", param=f"{where}.name")  # fmt: skip
            if fn.name in schemas:
                raise ApiError(400, f"{where}.name: {fn.name!r} is listed twice",
                               param=f"{where}.name")  # fmt: skip
            schemas[fn.name] = _checked_schema(fn.parameters, f"{where}.parameters")
            tools.append(tool.model_dump(exclude_none=True))
        choice, named = _choice(body.tool_choice, schemas)
        _check_history(body)
        return ToolRequest(tuple(tools), schemas, choice, named, body.parallel_tool_calls)

    def grammar(self, parser: str) -> str:
        """The EBNF of a required or named choice's output for `parser`'s format."""
        fmt = CONSTRAINED_PARSER.get(parser, parser)
        before, between, after, key = LAYOUTS[fmt]
        names = [self.named] if self.named else self.names
        calls = [{"type": "object", "properties": {"name": {"const": n}, key: self.schemas[n]},
                  "required": ["name", key], "additionalProperties": False}
                 for n in names]  # fmt: skip
        schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
        rules = _schema_rules(schema)
        one = f"{_lit(before)} call_object {_lit(after)}"
        if self.parallel and self.choice == "required":
            one = f"{_lit(before)} call_object ({_lit(between)} call_object)* {_lit(after)}"
        return f"{rules}\nroot ::= {one}\n"

    def reading_parser(self, parser: str) -> str:
        """The parser that reads this request's output (constrained pythonic: hermes)."""
        return CONSTRAINED_PARSER.get(parser, parser) if self.constrained else parser


def _lit(text: str) -> str:
    return json.dumps(text) if text else '""'


def _schema_rules(schema: dict[str, Any]) -> str:
    """The EBNF rules of a JSON schema, its root renamed `call_object`."""
    from radixlm.grammar.xgrammar_backend import parse_grammar

    text = str(parse_grammar("json_schema", json.dumps(schema)))
    return re.sub(r"\broot\b", "call_object", text)


def _checked_schema(schema: dict[str, Any] | None, param: str) -> dict[str, Any]:
    """`schema` when it is a usable object schema (none: no parameters); else a 400."""
    if schema is None:
        return NO_PARAMETERS
    if schema.get("type", "object") != "object":
        raise ApiError(400, f"{param}: the parameters schema must describe an object "
                       f"(got type {schema.get('type')!r})", param=param)  # fmt: skip
    from radixlm.grammar.xgrammar_backend import parse_grammar

    try:
        parse_grammar("json_schema", json.dumps(schema))
    except GrammarError as e:
        raise ApiError(400, f"{param}: {e.reason}", param=param) from None
    return schema


def _choice(choice: Any, schemas: dict[str, Any]) -> tuple[str, str | None]:
    """(none / auto / required / named, the named function); 400 for a choice that
    cannot be met."""
    if choice is None:
        return ("auto" if schemas else "none"), None
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        if name not in schemas:
            listed = ", ".join(schemas) or "none"
            raise ApiError(400, f"tool_choice.function.name: {name!r} is not in tools "
                           f"(listed: {listed})", param="tool_choice.function.name")  # fmt: skip
        return "named", name
    if choice == "required" and not schemas:
        raise ApiError(400, "tool_choice: 'required' needs at least one tool in tools",
                       param="tool_choice")  # fmt: skip
    return choice, None


def _check_history(body: ChatCompletionRequest) -> None:
    """Each tool turn answers a call an earlier assistant turn made; calls' arguments
    are JSON objects."""
    made: set[str] = set()
    for i, m in enumerate(body.messages):
        for j, call in enumerate(m.tool_calls or []):
            if m.role != "assistant":
                raise ApiError(400, f"messages.{i}.tool_calls: only assistant messages make "
                               "tool calls", param=f"messages.{i}.tool_calls")  # fmt: skip
            param = f"messages.{i}.tool_calls.{j}.function.arguments"
            try:
                args = json.loads(call.function.arguments or "{}")
            except json.JSONDecodeError:
                args = None
            if not isinstance(args, dict):
                raise ApiError(400, f"{param}: not the JSON text of an object", param=param)
            made.add(call.id)
        if m.role == "tool":
            param = f"messages.{i}.tool_call_id"
            if not m.tool_call_id:
                raise ApiError(400, f"{param}: required on tool messages", param=param)
            if m.tool_call_id not in made:
                raise ApiError(400, f"{param}: {m.tool_call_id!r} answers no earlier tool call",
                               param=param)  # fmt: skip
