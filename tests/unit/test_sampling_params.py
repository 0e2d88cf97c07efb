"""SamplingParams: SGLang defaults, from_dict parsing, validation errors naming the field."""

from __future__ import annotations

import dataclasses
import math

import pytest

from radixlm.sampling import SamplingParams, SamplingParamsError


def test_defaults_match_sglang():
    p = SamplingParams()
    assert (p.max_new_tokens, p.min_new_tokens) == (128, 0)
    assert (p.temperature, p.top_p, p.top_k, p.min_p) == (1.0, 1.0, -1, 0.0)
    assert (p.frequency_penalty, p.presence_penalty, p.repetition_penalty) == (0.0, 0.0, 1.0)
    assert p.stop is None and p.stop_token_ids is None and p.stop_regex is None
    assert not p.ignore_eos and p.skip_special_tokens and p.spaces_between_special_tokens
    assert not p.no_stop_trim and p.n == 1 and p.seed is None
    assert p.regex is None and p.json_schema is None and p.ebnf is None
    assert p.logit_bias is None and p.custom_params is None
    assert SamplingParams.from_dict({}) == p == SamplingParams.from_dict(None)


def test_nulls_and_empty_lists_mean_unset():
    # SGLang clients send every field, null or [] for the unused ones.
    d = {
        "max_new_tokens": 16,
        "stop": [],
        "stop_token_ids": [],
        "stop_regex": [],
        "temperature": 0,
        "top_p": None,
        "top_k": None,
        "min_p": None,
        "regex": None,
        "json_schema": None,
        "ebnf": None,
        "sampling_seed": None,
        "logit_bias": None,
    }
    p = SamplingParams.from_dict(d)
    assert p.max_new_tokens == 16 and p.top_p == 1.0 and p.top_k == -1
    assert p.stop_strings == () and p.stop_ids == () and p.stop_regexes == ()
    assert p.is_greedy and p.grammar is None


BAD_VALUES = [
    ("temperature", -0.1),
    ("temperature", math.nan),
    ("temperature", math.inf),
    ("temperature", "1.0"),
    ("temperature", True),
    ("top_p", 0.0),
    ("top_p", 1.5),
    ("top_p", -0.5),
    ("top_p", math.nan),
    ("top_k", -2),
    ("top_k", 2.5),
    ("top_k", True),
    ("top_k", "5"),
    ("min_p", -0.1),
    ("min_p", 1.01),
    ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0),
    ("frequency_penalty", 2.5),
    ("frequency_penalty", -2.01),
    ("presence_penalty", 3.0),
    ("presence_penalty", -3.0),
    ("max_new_tokens", -1),
    ("max_new_tokens", False),
    ("max_new_tokens", 1.5),
    ("min_new_tokens", -1),
    ("n", 0),
    ("n", True),
    ("stop", 5),
    ("stop", ["ok", 3]),
    ("stop", {"a": 1}),
    ("stop_token_ids", [1, "2"]),
    ("stop_token_ids", [1, True]),
    ("stop_token_ids", [-1]),
    ("stop_token_ids", 7),
    ("stop_regex", ["("]),
    ("ignore_eos", 1),
    ("ignore_eos", "true"),
    ("skip_special_tokens", 0),
    ("spaces_between_special_tokens", "yes"),
    ("no_stop_trim", "no"),
    ("seed", 1.5),
    ("seed", True),
    ("sampling_seed", "42"),
    ("regex", 5),
    ("json_schema", 5),
    ("ebnf", ["a"]),
    ("logit_bias", {"abc": 1.0}),
    ("logit_bias", {"-3": 1.0}),
    ("logit_bias", {"3": "high"}),
    ("logit_bias", {"3": math.nan}),
    ("logit_bias", [1, 2]),
    ("custom_params", "x"),
    ("stream_interval", 0),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_bad_value_names_the_field(field, value):
    with pytest.raises(SamplingParamsError) as info:
        SamplingParams.from_dict({field: value})
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert field in str(info.value)


def test_every_field_rejects_a_foreign_object():
    # A field without a check would silently accept this.
    for f in dataclasses.fields(SamplingParams):
        with pytest.raises(SamplingParamsError) as info:
            SamplingParams.from_dict({f.name: object()})
        assert info.value.field == f.name


def test_cross_field_checks():
    with pytest.raises(SamplingParamsError) as info:
        SamplingParams.from_dict({"max_new_tokens": 4, "min_new_tokens": 5})
    assert info.value.field == "min_new_tokens"
    # min_new_tokens alone is checked against the default max_new_tokens (128).
    with pytest.raises(SamplingParamsError):
        SamplingParams.from_dict({"min_new_tokens": 200})
    with pytest.raises(SamplingParamsError) as info:
        SamplingParams.from_dict({"regex": "a+", "json_schema": "{}"})
    assert info.value.field == "json_schema"
    with pytest.raises(SamplingParamsError) as info:
        SamplingParams.from_dict({"ebnf": "root ::= 'a'", "structural_tag": "{}"})
    assert info.value.field == "structural_tag"


def test_unknown_key_is_named():
    with pytest.raises(SamplingParamsError) as info:
        SamplingParams.from_dict({"temperature": 0.5, "top_q": 0.3})
    assert info.value.field == "top_q"
    with pytest.raises(SamplingParamsError):
        SamplingParams.from_dict(["temperature", 0.5])


def test_direct_construction_is_validated_too():
    with pytest.raises(SamplingParamsError) as info:
        SamplingParams(temperature=-1.0)
    assert info.value.field == "temperature"


def test_seed_alias_and_conflict():
    assert SamplingParams.from_dict({"sampling_seed": 7}).seed == 7
    assert SamplingParams.from_dict({"seed": 7, "sampling_seed": 7}).seed == 7
    assert SamplingParams.from_dict({"seed": -3}).seed == -3
    with pytest.raises(SamplingParamsError) as info:
        SamplingParams.from_dict({"seed": 7, "sampling_seed": 8})
    assert info.value.field == "sampling_seed"


def test_normalisation_and_round_trip():
    d = {
        "max_new_tokens": 32.0,
        "min_new_tokens": 2,
        "temperature": 1,
        "top_p": 0.9,
        "top_k": 0,
        "min_p": 0.05,
        "frequency_penalty": -0.5,
        "presence_penalty": 2,
        "repetition_penalty": 1.1,
        "stop": ["\n\n", "END"],
        "stop_token_ids": [2, 3],
        "stop_regex": [r"\d+\."],
        "ignore_eos": True,
        "skip_special_tokens": False,
        "spaces_between_special_tokens": False,
        "no_stop_trim": True,
        "n": 3,
        "sampling_seed": 1234,
        "json_schema": '{"type": "object"}',
        "logit_bias": {"11": -100, 12: 2.5},
        "custom_params": {"token_id": 5},
        "stream_interval": 4,
    }
    p = SamplingParams.from_dict(d)
    assert p.max_new_tokens == 32 and isinstance(p.max_new_tokens, int)
    assert isinstance(p.temperature, float) and isinstance(p.presence_penalty, float)
    assert p.stop == ("\n\n", "END") and p.stop_token_ids == (2, 3)
    assert dict(p.logit_bias) == {11: -100.0, 12: 2.5}
    assert p.grammar == ("json_schema", '{"type": "object"}')
    assert p.seed == 1234 and not p.is_greedy and p.uses_penalties
    again = SamplingParams.from_dict(p.to_dict())
    assert again == p and hash(again) == hash(p)
    assert p.to_dict()["stop"] == ["\n\n", "END"]


def test_frozen_and_read_only_mappings():
    p = SamplingParams.from_dict({"logit_bias": {"1": 1.0}, "stop": ["x"]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.temperature = 0.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        p.logit_bias[2] = 1.0  # type: ignore[index]
    q = dataclasses.replace(p, temperature=0.5)
    assert q.temperature == 0.5 and p.temperature == 1.0
    with pytest.raises(SamplingParamsError):
        dataclasses.replace(p, top_p=0.0)


@pytest.mark.parametrize(
    ("d", "greedy"),
    [
        ({"temperature": 0}, True),
        ({"temperature": 1e-7}, True),
        ({"temperature": 1e-5}, False),
        ({"top_k": 1}, True),
        ({"top_k": 2}, False),
        ({}, False),
    ],
)
def test_is_greedy(d, greedy):
    assert SamplingParams.from_dict(d).is_greedy is greedy


def test_stop_views():
    assert SamplingParams(stop="###").stop_strings == ("###",)
    assert SamplingParams(stop=["a", "", "b"]).stop_strings == ("a", "b")
    assert SamplingParams(stop="").stop_strings == ()
    assert SamplingParams(stop_regex="x+").stop_regexes == ("x+",)
    assert SamplingParams(stop_token_ids=[5, 6]).stop_ids == (5, 6)


def test_check_vocab():
    SamplingParams(stop_token_ids=[9], logit_bias={9: 1.0}).check_vocab(10)
    with pytest.raises(SamplingParamsError) as info:
        SamplingParams(stop_token_ids=[10]).check_vocab(10)
    assert info.value.field == "stop_token_ids"
    with pytest.raises(SamplingParamsError) as info:
        SamplingParams(logit_bias={"10": 1.0}).check_vocab(10)
    assert info.value.field == "logit_bias"
