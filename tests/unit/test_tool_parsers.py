"""Tool-call parsers: every chunking of a text gives the whole reading, nothing taken back."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from radixlm.server.tools import (
    ArgsDelta,
    CallHeader,
    TextDelta,
    collect,
    default_parser,
    make_parser,
)

NAMES = ["get_weather", "get_time"]
W = '{"name": "get_weather", "arguments": {"city": "Paris", "days": 12, "units": ["c"]}}'
T = '{"name": "get_time", "arguments": {"tz": "Europe/Rome", "fmt": "a \\"q\\" \\u00e9"}}'

# (parser, text, expected content, expected [(name, arguments)])
CASES = [
    ("hermes", f"Let me check. <tool_call>\n{W}\n</tool_call>", "Let me check. ",
     [("get_weather", '{"city": "Paris", "days": 12, "units": ["c"]}')]),
    ("hermes", f"<tool_call>\n{W}\n</tool_call>\n<tool_call>\n{T}\n</tool_call>", "",
     [("get_weather", '{"city": "Paris", "days": 12, "units": ["c"]}'),
      ("get_time", '{"tz": "Europe/Rome", "fmt": "a \\"q\\" \\u00e9"}')]),
    ("hermes", "no calls here, just < and <tool text", "no calls here, just < and <tool text", []),
    ("hermes", '<tool_call>{"name": "get_time"}</tool_call>', "", [("get_time", "{}")]),
    ("hermes", '<tool_call>{"name": "get_time", "arguments": "{\\"tz\\": \\"UTC\\"}"}</tool_call>',
     "", [("get_time", '{"tz": "UTC"}')]),
    # broken before the call was certain: content, whole
    ("hermes", '<tool_call>{"name": get_weather}</tool_call> ok',
     '<tool_call>{"name": get_weather}</tool_call> ok', []),
    ("hermes", '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
     '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>', []),
    ("hermes", '<tool_call>{"nam', '<tool_call>{"nam', []),
    # broken or cut short after it was certain: the arguments are closed, never retracted
    ("hermes", '<tool_call>{"name": "get_weather", "arguments": {"city": "Par',
     "", [("get_weather", '{"city": "Par"}')]),
    ("hermes", '<tool_call>{"name": "get_weather", "arguments": {"a": 1,,}}</tool_call>x',
     "x", [("get_weather", '{"a": 1}')]),
    ("qwen", f"<tool_call>{W}</tool_call>tail", "tail",
     [("get_weather", '{"city": "Paris", "days": 12, "units": ["c"]}')]),
    ("llama3", '{"name": "get_weather", "parameters": {"city": "Oslo"}}; '
     '{"name": "get_time", "parameters": {}}', "",
     [("get_weather", '{"city": "Oslo"}'), ("get_time", "{}")]),
    ("llama3", '<|python_tag|>{"name": "get_time", "parameters": {"tz": "UTC"}}', "",
     [("get_time", '{"tz": "UTC"}')]),
    ("llama3", "The answer is {not json}", "The answer is {not json}", []),
    ("llama3", "{not json}", "{not json}", []),
    ("mistral", f"Sure [TOOL_CALLS] [{W}, {T}]", "Sure ",
     [("get_weather", '{"city": "Paris", "days": 12, "units": ["c"]}'),
      ("get_time", '{"tz": "Europe/Rome", "fmt": "a \\"q\\" \\u00e9"}')]),
    ("mistral", "[TOOL_CALLS] nope", "[TOOL_CALLS] nope", []),
    ("pythonic", '[get_weather(city="Paris", days=3), get_time(tz=\'UTC\')]', "",
     [("get_weather", '{"city": "Paris", "days": 3}'), ("get_time", '{"tz": "UTC"}')]),
    ("pythonic", "[get_weather(city=os.system('x'))]", "[get_weather(city=os.system('x'))]", []),
    ("pythonic", "[1, 2, 3] are numbers", "[1, 2, 3] are numbers", []),
    ("pythonic", "Hello [get_time()]", "Hello [get_time()]", []),
]


def _ids():
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


def _run(name: str, chunks: list[str]) -> list:
    parser = make_parser(name, NAMES)
    parser.make_id = _ids()
    events = []
    for c in chunks:
        events += parser.feed(c)
    return events + parser.finish()


def _chunkings(text: str, seeds: int = 12):
    yield [text]
    yield list(text)
    for seed in range(seeds):
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 12))))
        yield [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}:{c[1][:24]}")
def test_every_chunking_gives_the_whole_reading(case):
    name, text, content, calls = case
    whole = make_parser(name, NAMES).parse(text)
    assert whole.content == content
    assert [(c.name, c.arguments) for c in whole.calls] == calls
    for c in whole.calls:
        json.loads(c.arguments)  # always an object's JSON text
    for chunks in _chunkings(text):
        events = _run(name, chunks)
        got = collect(events)
        assert (got.content, [(c.name, c.arguments) for c in got.calls]) == (content, calls)
        assert [c.id for c in got.calls] == [f"call_{i}" for i in range(len(calls))]
        _check_order(events)


def _check_order(events) -> None:
    """Headers come once each in index order; fragments only for a call that has begun."""
    begun = -1
    for ev in events:
        if isinstance(ev, CallHeader):
            assert ev.index == begun + 1 and ev.name in NAMES
            begun = ev.index
        elif isinstance(ev, ArgsDelta):
            assert 0 <= ev.index <= begun and ev.text
        else:
            assert isinstance(ev, TextDelta) and ev.text


def test_arguments_stream_while_the_call_is_written():
    """One character at a time, the arguments come out before the call's text ends, and
    every emitted prefix is a prefix of the final arguments."""
    text = f"<tool_call>\n{W}\n</tool_call>"
    parser = make_parser("hermes", NAMES)
    seen, final_at = "", None
    for i, ch in enumerate(text):
        for ev in parser.feed(ch):
            if isinstance(ev, ArgsDelta):
                seen += ev.text
                if final_at is None and seen.endswith("Par"):
                    final_at = i
    assert final_at is not None and final_at < text.index("days")
    assert seen == '{"city": "Paris", "days": 12, "units": ["c"]}'


def test_partial_tag_is_held_back_then_released():
    parser = make_parser("hermes", NAMES)
    assert [e.text for e in parser.feed("a <tool_")] == ["a "]
    assert [e.text for e in parser.feed("box")] == ["<tool_box"]


def test_unlisted_names_are_not_calls_but_any_name_is_without_a_list():
    text = '<tool_call>{"name": "other", "arguments": {"x": 1}}</tool_call>'
    assert make_parser("hermes", NAMES).parse(text).calls == []
    assert [c.name for c in make_parser("hermes", None).parse(text).calls] == ["other"]


def _mutate(text: str, rng: random.Random) -> str:
    """`text` with one random edit: a character dropped, doubled or inserted, or cut off."""
    k = rng.randrange(len(text))
    edit = rng.randrange(4)
    if edit == 0:
        return text[:k] + text[k + 1:]
    if edit == 1:
        return text[:k] + text[k] + text[k:]
    if edit == 2:
        return text[:k] + rng.choice('{}[]",:; x\\<>') + text[k:]
    return text[:k]


def test_mutated_calls_never_raise_and_always_agree():
    """Fuzz: the cases' texts with random edits, in random chunkings: same reading as the
    whole text, arguments always an object's JSON, and many of them still calls."""
    rng = random.Random(0)
    with_calls = 0
    for name, text, _, _ in CASES:
        for _ in range(40):
            bad = _mutate(text, rng)
            if not bad:
                continue
            whole = make_parser(name, NAMES).parse(bad)
            with_calls += bool(whole.calls)
            for c in whole.calls:
                assert isinstance(json.loads(c.arguments), dict), (name, bad)
            for chunks in itertools.islice(_chunkings(bad, 3), 5):
                events = _run(name, chunks)
                _check_order(events)
                got = collect(events)
                assert got.content == whole.content, (name, bad, chunks)
                assert [(c.name, c.arguments) for c in got.calls] == \
                    [(c.name, c.arguments) for c in whole.calls], (name, bad, chunks)
    assert with_calls > 200  # the edits mostly land inside calls, exercising the repair


def test_default_parser_follows_the_template():
    assert default_parser(None) == "hermes"
    assert default_parser("{{ '<tool_call>' }}") == "hermes"
    assert default_parser("[TOOL_CALLS]") == "mistral"
    assert default_parser("<|python_tag|>") == "llama3"
    with pytest.raises(ValueError, match="unknown tool-call parser"):
        make_parser("nope")
