"""The grammar package without a model: validation, the compile cache, masks on random logits."""

from __future__ import annotations

import json
import re
import threading

import jsonschema
import pytest
import torch
from helpers.tiny_tokenizer import write_tiny_tokenizer

from radixlm.grammar import GrammarCache, GrammarError, make_backend, validate_grammar
from radixlm.tokenizer import load_tokenizer

VOCAB = 384
EOS = 2


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    write_tiny_tokenizer(path)
    tok = load_tokenizer(path)
    return make_backend("xgrammar", tok.hf_tokenizer, VOCAB, (EOS,)), tok


@pytest.mark.parametrize(
    "kind, spec, message",
    [
        ("regex", "(ab", "parenthesis"),
        ("regex", "[z-a]", "lower bound is larger"),
        ("json_schema", "{not json", "not valid JSON"),
        ("json_schema", "[1, 2]", "must be a JSON object"),
        ("json_schema", json.dumps({"type": "string", "not": {"const": "a"}}), "'not' at #"),
        (
            "json_schema",
            json.dumps({"type": "object", "properties": {"a": {"uniqueItems": True}}}),
            "'uniqueItems' at #/properties/a",
        ),
        ("json_schema", json.dumps({"allOf": [{"type": "object"}, {"required": ["a"]}]}), "allOf"),
        ("ebnf", 'root ::= foo', "not defined"),
        ("structural_tag", "{}", "not supported"),
    ],
)
def test_invalid_grammars_are_named(kind, spec, message):
    with pytest.raises(GrammarError, match=message) as info:
        validate_grammar(kind, spec)
    assert info.value.field == kind
    assert str(info.value).startswith(f"{kind}: ")


def test_keywords_are_checked_only_in_schema_positions():
    # A property called "not" and an enum value "if" are data, not keywords.
    validate_grammar("json_schema", json.dumps({
        "type": "object",
        "properties": {"not": {"type": "string", "enum": ["if", "then"]}},
        "$defs": {"x": {"type": "integer"}},
    }))  # fmt: skip
    with pytest.raises(GrammarError, match=r"'contains' at #/\$defs/x"):
        validate_grammar("json_schema", json.dumps({"$defs": {"x": {"contains": {}}}}))


def _walk(backend, compiled, gen: torch.Generator, max_steps: int = 80) -> list[int] | None:
    """Sample masked random logits until the grammar terminates; the ids before the stop."""
    matcher = backend.matcher(compiled)
    bitmask = backend.allocate_bitmask(1)
    ids: list[int] = []
    for _ in range(max_steps):
        matcher.fill_bitmask(bitmask, 0)
        logits = torch.randn(1, VOCAB, generator=gen) * 4
        backend.apply_bitmask(logits, bitmask, [0])
        token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
        assert matcher.accept_token(token), "the mask allowed a token the matcher refuses"
        if matcher.is_terminated():
            assert token == EOS
            return ids
        ids.append(token)
    return None


def test_masks_keep_random_walks_inside_a_regex(backend):
    be, tok = backend
    pattern = r"(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}"
    compiled = be.compile("regex", pattern)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        ids = _walk(be, compiled, gen)
        assert ids is not None and re.fullmatch(pattern, tok.decode(ids))


def test_bounded_strings_never_contain_control_characters(backend):
    # xgrammar's own class for strings with length bounds admits raw control characters
    # (invalid JSON); the backend swaps it for the JSON one.
    be, tok = backend
    schema = {"type": "object", "properties": {"s": {"type": "string", "minLength": 2,
              "maxLength": 6}}, "required": ["s"], "additionalProperties": False}  # fmt: skip
    compiled = be.compile("json_schema", json.dumps(schema))
    gen = torch.Generator().manual_seed(1)
    for _ in range(40):
        ids = _walk(be, compiled, gen)
        assert ids is not None
        jsonschema.validate(json.loads(tok.decode(ids)), schema)  # strict json.loads


def test_jump_forward_string_and_rollback(backend):
    be, tok = backend
    schema = {"type": "object", "properties": {"answer": {"type": "boolean"}},
              "required": ["answer"], "additionalProperties": False}  # fmt: skip
    matcher = be.matcher(be.compile("json_schema", json.dumps(schema)))
    assert matcher.jump_forward_string() == '{"answer": '
    ids = tok.encode('{"answer": ', add_special_tokens=False)
    for t in ids:
        assert matcher.accept_token(t)
    assert matcher.jump_forward_string() == ""  # true or false: a choice
    matcher.rollback(len(ids))
    assert matcher.jump_forward_string() == '{"answer": '


class _GatedBackend:
    """Wraps a backend; compile waits for `gate` and counts calls."""

    def __init__(self, inner) -> None:
        self.inner, self.gate, self.calls = inner, threading.Event(), 0

    def compile(self, kind, spec):
        self.calls += 1
        self.gate.wait(10)
        return self.inner.compile(kind, spec)


def test_cache_compiles_once_in_the_background(backend):
    gated = _GatedBackend(backend[0])
    cache = GrammarCache(gated)  # type: ignore[arg-type]
    try:
        first = cache.get("regex", "[0-9]+")
        assert not first.done()  # get() did not wait for the compile
        assert cache.get("regex", "[0-9]+") is first
        gated.gate.set()
        first.result(timeout=10)
        assert gated.calls == 1 and (cache.hits, cache.misses) == (1, 1)
        bad = cache.get("regex", "(")
        with pytest.raises(GrammarError, match="regex"):
            bad.result(timeout=10)
        assert cache.get("regex", "(") is bad  # the failure is cached too
    finally:
        cache.shutdown()


def test_cache_drops_the_least_recently_used(backend):
    cache = GrammarCache(backend[0], max_entries=2)
    try:
        a = cache.get("regex", "a")
        cache.get("regex", "b")
        assert cache.get("regex", "a") is a  # refreshes a
        cache.get("regex", "c")  # evicts b
        assert cache.get("regex", "a") is a
        assert cache.misses == 3
        cache.get("regex", "b")
        assert cache.misses == 4
    finally:
        cache.shutdown()
