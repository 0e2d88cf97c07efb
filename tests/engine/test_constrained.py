"""Constrained decoding on tiny random models, whose unconstrained output is noise.

Every output must fully match its regex / validate against its schema; jump-forward
must change how many forwards run, never the tokens.
"""

from __future__ import annotations

import ast
import json
import re
import threading

import jsonschema
import pytest
from helpers.engine_checks import assert_clean

IPV4 = r"(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}"
REGEXES = [IPV4, r"-?[1-9]\d{0,5}", r"[a-z]{3,8}@[a-z]{2,6}\.(com|org)", r"(yes|no|maybe)"]

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "height": {"type": "number", "minimum": 0, "maximum": 3},
        "role": {"enum": ["admin", "user", "guest"]},
        "nickname": {"type": "string", "maxLength": 6},  # optional
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 8},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    },
    "required": ["name", "age", "height", "role", "address", "tags"],
    "additionalProperties": False,
}
SCHEMAS = [
    PERSON,
    {"type": "array", "items": {"type": "integer", "minimum": -50, "maximum": 50},
     "minItems": 1, "maxItems": 4},
    {"anyOf": [{"type": "null"}, {"type": "object", "properties": {"ok": {"const": True}},
     "required": ["ok"], "additionalProperties": False}]},
]

# Arithmetic with one level of parentheses, at most four terms: every output ends.
ARITH = r"""
root ::= term (op term){0,3}
term ::= num | "(" num op num ")"
op ::= "+" | "-" | "*"
num ::= [1-9] [0-9]{0,2}
"""

SEEDS = 50


def _sampled(**extra):
    return {"temperature": 1.0, "seed": 1234, "n": SEEDS, "max_new_tokens": 120, **extra}


@pytest.mark.parametrize("pattern", REGEXES)
def test_regex_outputs_match_for_every_seed(engine_factory, pattern):
    eng = engine_factory("llama")
    outs = eng.generate("Answer:", _sampled(regex=pattern))
    assert len(outs) == SEEDS
    for o in outs:
        assert o["meta_info"]["finish_reason"]["type"] == "stop", o
        assert re.fullmatch(pattern, o["text"]), o["text"]
    assert len({o["text"] for o in outs}) > 1 or pattern == REGEXES[-1]  # the seeds differ
    assert_clean(eng)


@pytest.mark.parametrize("schema", SCHEMAS, ids=["nested", "array", "anyof"])
def test_json_outputs_validate_for_every_seed(engine_factory, schema):
    eng = engine_factory("llama")
    outs = eng.generate("JSON:", _sampled(json_schema=json.dumps(schema), max_new_tokens=200))
    for o in outs:
        assert o["meta_info"]["finish_reason"]["type"] == "stop", o
        jsonschema.validate(json.loads(o["text"]), schema)
    assert_clean(eng)


def test_optional_fields_appear_and_are_left_out(engine_factory):
    eng = engine_factory("llama")
    outs = eng.generate("JSON:", _sampled(json_schema=PERSON, max_new_tokens=200))  # as an object
    present = sum("nickname" in json.loads(o["text"]) for o in outs)
    assert 0 < present < SEEDS


def test_ebnf_arithmetic(engine_factory):
    eng = engine_factory("llama")
    outs = eng.generate("Sum:", _sampled(ebnf=ARITH))
    for o in outs:
        text = o["text"]
        assert o["meta_info"]["finish_reason"]["type"] == "stop"
        assert re.fullmatch(r"[0-9()+\-*]+", text) and not re.search(r"\(\(|\b0\d", text), text
        assert isinstance(eval(compile(ast.parse(text, mode="eval"), "<out>", "eval")), int)
    assert_clean(eng)


FIXED_KEYS = {
    "type": "object",
    "properties": {
        "the_first_rather_long_property_name": {"type": "boolean"},
        "another_quite_long_fixed_key_name_here": {"enum": ["alpha", "beta"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    "required": ["the_first_rather_long_property_name", "another_quite_long_fixed_key_name_here",
                 "count"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "seed": 7}])
def test_jump_forward_gives_the_same_tokens_in_fewer_steps(engine_factory, sampling):
    on = engine_factory("llama")
    off = engine_factory("llama", disable_jump_forward=True)
    prompts = ["A", "Some JSON please:", "{", "Output:"]
    sp = {"json_schema": json.dumps(FIXED_KEYS), "max_new_tokens": 150, **sampling}
    results, steps = [], []
    for eng in (on, off):
        before = eng.get_stats()
        results.append(eng.generate(prompts, sp))
        after = eng.get_stats()
        steps.append(after["decode_steps"] - before["decode_steps"])
        if eng is on:
            assert after["jump_forward_tokens"] > before["jump_forward_tokens"]
        assert_clean(eng)
    for a, b in zip(*results, strict=True):
        assert a["text"] == b["text"] and a["output_ids"] == b["output_ids"]
        assert a["meta_info"]["completion_tokens"] == b["meta_info"]["completion_tokens"]
        jsonschema.validate(json.loads(a["text"]), FIXED_KEYS)
    assert steps[0] < steps[1] / 2, steps  # the keys are most of the text


def test_jump_forward_respects_max_new_tokens(engine_factory):
    eng = engine_factory("llama")
    out = eng.generate("x", {"json_schema": json.dumps(FIXED_KEYS), "max_new_tokens": 5,
                             "temperature": 0})  # fmt: skip
    assert out["meta_info"]["completion_tokens"] == 5
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 5}
    assert_clean(eng)


def test_constrained_and_free_requests_share_a_batch(engine_factory):
    eng = engine_factory("llama")
    free = {"temperature": 0, "max_new_tokens": 40, "ignore_eos": True}
    alone = eng.generate("hello", free)
    box: dict[str, dict] = {}
    t = threading.Thread(target=lambda: box.update(out=eng.generate(
        "hello", {"regex": IPV4, "temperature": 0, "max_new_tokens": 20})))  # fmt: skip
    t.start()
    again = eng.generate("hello", free)  # decodes beside the constrained one
    t.join(30)
    assert again["output_ids"] == alone["output_ids"]
    assert re.fullmatch(IPV4, box["out"]["text"])
    assert_clean(eng)


def test_slow_compile_does_not_stall_other_requests(engine_factory):
    eng = engine_factory("llama")
    cache = eng.scheduler.constraints.cache
    gate = threading.Event()
    real = cache.backend.compile

    def gated(kind, spec):
        gate.wait(30)
        return real(kind, spec)

    cache.backend.compile = gated  # the next compile waits for the gate
    try:
        box: dict[str, dict] = {}
        t = threading.Thread(target=lambda: box.update(out=eng.generate(
            "x", {"regex": r"[0-9]{4}", "max_new_tokens": 10, "temperature": 0})))  # fmt: skip
        t.start()
        free = eng.generate("y", {"max_new_tokens": 16, "temperature": 0, "ignore_eos": True})
        assert free["meta_info"]["completion_tokens"] == 16
        assert t.is_alive() and eng.get_stats()["num_waiting_reqs"] == 1
    finally:
        gate.set()
        cache.backend.compile = real
    t.join(30)
    assert re.fullmatch(r"[0-9]{4}", box["out"]["text"])
    assert_clean(eng)


def test_bad_grammars_fail_only_their_request(engine_factory):
    eng = engine_factory("llama")
    for sp, field in [
        ({"regex": "[0-9"}, "regex"),
        ({"json_schema": "{oops"}, "json_schema"),
        ({"json_schema": {"type": "array", "uniqueItems": True}}, "json_schema"),
        ({"ebnf": "root ::= missing"}, "ebnf"),
        ({"regex": "a", "json_schema": "{}"}, "json_schema"),
    ]:
        with pytest.raises(ValueError, match=rf"^(sampling_params\.)?{field}: "):
            eng.generate("x", sp)
    assert eng.generate("x", {"regex": "ab+", "max_new_tokens": 4})["text"].startswith("ab")
    assert_clean(eng)


def test_streaming_with_jump_forward_sends_each_step_once(engine_factory):
    eng = engine_factory("llama")
    sp = {"json_schema": json.dumps(FIXED_KEYS), "max_new_tokens": 150, "temperature": 0}
    whole = eng.generate("stream", sp)
    chunks = list(eng.generate_stream("stream", sp))
    ids = [t for c in chunks for t in c["output_ids"]]
    assert ids == whole["output_ids"] and chunks[-1]["text"] == whole["text"]
    assert "".join(c["text_delta"] for c in chunks) == whole["text"]
    assert max(len(c["output_ids"]) for c in chunks) > 1  # a draft landed in one step
    assert len(chunks) < len(ids)
    assert_clean(eng)


def test_grammar_backend_none_refuses_constraints(engine_factory):
    eng = engine_factory("llama", grammar_backend="none")
    with pytest.raises(ValueError, match="regex: constrained decoding is disabled"):
        eng.generate("x", {"regex": "a+"})
    assert eng.generate("x", {"max_new_tokens": 2})["meta_info"]["completion_tokens"] == 2
    assert_clean(eng)
