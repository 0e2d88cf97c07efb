"""Chat-side tool plumbing without a server: templates, tool_choice grammars, output
reading with reasoning and calls together."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
from helpers.tiny_tokenizer import CHATML_TEMPLATE, write_tiny_tokenizer

from radixlm.server.chat_output import ChoiceOutput, chat_delta
from radixlm.server.chat_request import chat_prompt
from radixlm.server.errors import ApiError
from radixlm.server.protocol import ChatCompletionRequest
from radixlm.server.reasoning import ReasoningParser
from radixlm.server.tools import make_parser
from radixlm.server.tools.request import ToolRequest
from radixlm.tokenizer import load_tokenizer

# A ChatML template that knows tools, in the style of Qwen 2.5's.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n# Tools\n<tools>"
    "{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n</tools><|im_end|>\n{% endif %}"
    "{% for m in messages %}"
    "{% if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n"
    "</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>\n"
    '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}'
    "\n</tool_call>{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOLS = [{"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}]
HISTORY = [
    {"role": "user", "content": [{"type": "text", "text": "time"}, {"type": "text", "text": "?"}]},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
     "function": {"name": "get_time", "arguments": '{"tz": "UTC"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
]  # fmt: skip


def _state(tmp_path, template):
    write_tiny_tokenizer(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return SimpleNamespace(tokenizer=load_tokenizer(tmp_path))


def _rendered(state, **body) -> str:
    req = ChatCompletionRequest(**{"messages": HISTORY, "tools": TOOLS, **body})
    return state.tokenizer.decode(chat_prompt(state, req, ToolRequest.from_body(req)), False)


def test_a_template_with_tools_gets_them_and_the_calls_as_objects(tmp_path):
    state = _state(tmp_path, TOOLS_TEMPLATE)
    assert state.tokenizer.supports_tools
    text = _rendered(state)
    assert json.dumps(TOOLS[0]) in text.replace("\n", "")  # through `tools=`
    assert '{"name": "get_time", "arguments": {"tz": "UTC"}}' in text  # arguments as an object
    assert "<tool_response>\n12:00\n</tool_response>" in text and "time?" in text
    assert "You may call" not in text  # radixlm's own description is not added


def test_a_template_without_tools_gets_the_hermes_description(tmp_path):
    state = _state(tmp_path, CHATML_TEMPLATE)
    assert not state.tokenizer.supports_tools
    text = _rendered(state)
    assert text.startswith("<|im_start|>system\nYou may call one or more functions")
    assert json.dumps(TOOLS[0]) in text and "<tool_call>" in text
    assert '<|im_start|>user\n<tool_response>\n12:00\n</tool_response><|im_end|>' in text
    assert text.endswith("<|im_start|>assistant\n")
    # the tools come before the conversation: one prefix for every turn of an agent
    shorter = _rendered(state, messages=HISTORY[:1])
    assert text.startswith(shorter[: shorter.index("<|im_start|>user")])


def _grammar_accepts(ebnf: str, text: str) -> bool:
    import xgrammar
    from xgrammar.testing import _is_grammar_accept_string

    return _is_grammar_accept_string(xgrammar.Grammar.from_ebnf(ebnf), text)


@pytest.mark.parametrize("parser, call", [
    ("hermes", '<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>'),
    ("pythonic", '<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>'),
    ("llama3", '{"name": "get_time", "parameters": {"tz": "UTC"}}'),
    ("mistral", '[TOOL_CALLS][{"name": "get_time", "arguments": {"tz": "UTC"}}]'),
])  # fmt: skip
def test_choice_grammars_take_the_parsers_format_and_nothing_else(parser, call):
    tools = [*TOOLS, {"type": "function", "function": {"name": "noop"}}]
    req = ToolRequest.from_body(ChatCompletionRequest(
        messages=HISTORY[:1], tools=tools, tool_choice="required"))  # fmt: skip
    ebnf = req.grammar(parser)
    assert _grammar_accepts(ebnf, call)
    assert _grammar_accepts(ebnf, call.replace('"tz": "UTC"', "").replace("get_time", "noop"))
    assert not _grammar_accepts(ebnf, call.replace('"tz"', '"zone"'))  # schema enforced
    assert not _grammar_accepts(ebnf, call.replace("get_time", "rm"))  # only listed tools
    assert make_parser(req.reading_parser(parser), req.names).parse(call).calls
    named = ToolRequest.from_body(ChatCompletionRequest(messages=HISTORY[:1], tools=tools,
        tool_choice={"type": "function", "function": {"name": "noop"}}))  # fmt: skip
    assert not _grammar_accepts(named.grammar(parser), call)  # only the named tool


def test_parallel_calls_follow_parallel_tool_calls():
    two = ('<tool_call>\n{"name": "get_time", "arguments": {"tz": "a"}}\n</tool_call>\n'
           '<tool_call>\n{"name": "get_time", "arguments": {"tz": "b"}}\n</tool_call>')
    body = dict(messages=HISTORY[:1], tools=TOOLS, tool_choice="required")
    parallel = ToolRequest.from_body(ChatCompletionRequest(**body))
    assert _grammar_accepts(parallel.grammar("hermes"), two)
    single = ToolRequest.from_body(ChatCompletionRequest(**body, parallel_tool_calls=False))
    assert not _grammar_accepts(single.grammar("hermes"), two)
    out = ChoiceOutput(None, True, make_parser("hermes", ["get_time"]), parallel=False)
    msg = out.message(two)
    assert [json.loads(c["function"]["arguments"]) for c in msg["tool_calls"]] == [{"tz": "a"}]


def test_constraints_conflict_and_missing_tools_are_400():
    for body, param in [
        (dict(tool_choice="required"), "tool_choice"),
        (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "x"}}),
         "tool_choice.function.name"),
        (dict(tools=[{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object", "not": {}}}}]),
         "tools.0.function.parameters"),
    ]:  # fmt: skip
        with pytest.raises(ApiError) as e:
            ToolRequest.from_body(ChatCompletionRequest(messages=HISTORY[:1], **body))
        assert e.value.param == param and e.value.status == 400


RAW = ('<think>plan: <tool_call>\n{"name": "get_time", "arguments": {"tz": "X"}}\n</tool_call>'
       '</think>Checking.<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n'
       "</tool_call>")


def _reader(separate: bool) -> ChoiceOutput:
    return ChoiceOutput(ReasoningParser("qwen3"), separate, make_parser("hermes", ["get_time"]))


@pytest.mark.parametrize("separate", [True, False])
def test_reasoning_and_calls_together_streamed_equal_whole(separate):
    """Only the answer's call is made; without the split, content is the raw text less the
    call; the streamed deltas joined equal the message, in random chunkings."""
    whole = _reader(separate).message(RAW)
    [call] = whole["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"tz": "UTC"}
    if separate:
        assert whole["content"] == "Checking." and "tz" in whole["reasoning_content"]
    else:
        assert whole["content"] == RAW[: RAW.index("Checking.") + 9]
        assert "reasoning_content" not in whole
    for seed in range(8):
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(RAW)), 9))
        out, content, reasoning, args = _reader(separate), "", "", ""
        for a, b in zip([0, *cuts], [*cuts, len(RAW)], strict=True):
            delta, reason = chat_delta(out, RAW[a:b], "stop" if b == len(RAW) else None)
            content += delta.get("content", "")
            reasoning += delta.get("reasoning_content", "")
            args += "".join(t["function"]["arguments"] for t in delta.get("tool_calls", []))
        assert reason == "tool_calls"
        assert content == (whole["content"] or "") and args == call["function"]["arguments"]
        assert reasoning == (whole.get("reasoning_content") or "")
