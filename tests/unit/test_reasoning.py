"""Reasoning split: round trips, every chunking, and tool calls written while reasoning."""

from __future__ import annotations

import random

import pytest

from radixlm.server.reasoning import ReasoningParser
from radixlm.server.tools import make_parser

# (style, raw output, reasoning, content)
CASES = [
    ("qwen3", "<think>\nstep 1, step 2\n</think>\n\nThe answer is 4.",
     "\nstep 1, step 2\n", "\n\nThe answer is 4."),
    ("qwen3", "  <think>x</think>y", "x", "y"),
    ("qwen3", "No thinking today.", "", "No thinking today."),
    ("qwen3", "<thin", "", "<thin"),
    ("qwen3", "<think>cut short", "cut short", ""),
    ("deepseek-r1", "I should add.</think>4", "I should add.", "4"),
    ("deepseek-r1", "<think>I should add.</think>4", "I should add.", "4"),
    ("deepseek-r1", "never closed </thi", "never closed </thi", ""),
    ("deepseek-r1", "a</think>b</think>c", "a", "b</think>c"),
]


def _pieces(style: str, chunks: list[str]) -> list[tuple[str, str]]:
    p = ReasoningParser(style)
    out = []
    for c in chunks:
        out += p.feed(c)
    return out + p.finish()


def _chunkings(text: str):
    yield [text]
    yield list(text)
    for seed in range(10):
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, 5)))
        yield [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}:{c[1][:16]}")
def test_split_round_trips_in_every_chunking(case):
    style, raw, reasoning, content = case
    assert ReasoningParser(style).split(raw) == (reasoning, content)
    for chunks in _chunkings(raw):
        pieces = _pieces(style, chunks)
        assert "".join(t for _, t in pieces) == raw  # unsplit: the raw text exactly
        assert "".join(t for k, t in pieces if k == "reasoning") == reasoning
        assert "".join(t for k, t in pieces if k == "content") == content
        assert all(t for _, t in pieces)


def test_a_tool_call_inside_reasoning_is_not_a_call():
    """Only the answer is read for calls: one written while reasoning stays reasoning."""
    call = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    raw = f"<think>maybe {call}?</think>Done. {call}"
    reasoning, content = ReasoningParser("qwen3").split(raw)
    assert call in reasoning
    inside = make_parser("hermes", ["get_time"]).parse(reasoning)
    assert inside.calls  # the same text would be a call...
    answer = make_parser("hermes", ["get_time"]).parse(content)
    assert answer.content == "Done. " and len(answer.calls) == 1  # ...only the answer's is


def test_unknown_style_is_refused():
    with pytest.raises(ValueError, match="unknown reasoning parser"):
        ReasoningParser("o1")
