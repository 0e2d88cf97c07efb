"""Tool calling on the embedded SmolLM2-135M-Instruct, whose chat template has no tool
support: radixlm describes the tools itself (Hermes format) and reads Hermes calls.

A 135M model decides weakly whether to call a tool, so `auto` is checked only for what the
protocol guarantees, and how often it called a tool on a fixed set is printed; `required`
is checked for arguments that validate.
"""

from __future__ import annotations

import json
import sys

import jsonschema
import openai
import pytest
from e2e.server_process import free_port, start_server, stop_server

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
           "required": ["city"], "additionalProperties": False}  # fmt: skip
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": WEATHER}}]  # fmt: skip
ASKS = ["What is the weather in Paris?", "Is it raining in London right now?",
        "How warm is it in Tokyo today?", "Weather for Berlin, please.",
        "Tell me a joke.", "What is 2 + 2?", "Say hello.", "Name a color."]  # fmt: skip


@pytest.fixture(scope="module")
def client(smollm2_path):
    port = free_port()
    cmd = [sys.executable, "-m", "radixlm.launch_server", "--log-level", "warning",
           "--model", str(smollm2_path), "--port", str(port), "--max-total-tokens", "8192"]
    proc = start_server(cmd, port, timeout=180)
    yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
    stop_server(proc)


def test_auto_and_required_on_smollm2(client):
    called = []
    for ask in ASKS:
        out = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": ask}], tools=TOOLS,
            tool_choice="auto", max_tokens=60, temperature=0).choices[0]  # fmt: skip
        calls = out.message.tool_calls or []
        for c in calls:
            assert c.id.startswith("call_") and c.function.name == "get_weather"
            assert isinstance(json.loads(c.function.arguments), dict)
        assert out.finish_reason == ("tool_calls" if calls else out.finish_reason)
        assert calls or isinstance(out.message.content, str)
        called.append(bool(calls))
    print(f"\nSmolLM2 auto: called a tool on {sum(called[:4])}/4 weather questions and "
          f"{sum(called[4:])}/4 others")
    for ask in ASKS[:4]:
        out = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": ask}], tools=TOOLS,
            tool_choice="required", parallel_tool_calls=False, max_tokens=60,
            temperature=0).choices[0]  # fmt: skip
        assert out.finish_reason == "tool_calls"
        [call] = out.message.tool_calls
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)
        print(f"  required: {ask!r} -> {call.function.arguments}")
