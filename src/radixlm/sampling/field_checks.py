"""Checks of single `SamplingParams` fields: each takes (field name, value) and returns the
normalised value, or raises `SamplingParamsError` naming the field."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any


class SamplingParamsError(ValueError):
    """An invalid sampling parameter; `.field` names it and `.message` says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"sampling_params.{field}: {message}")
        self.field = field
        self.message = message


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise SamplingParamsError(name, f"must be an integer, got a boolean ({value})")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, int):
        raise SamplingParamsError(name, f"must be an integer, got {value!r}")
    return value


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SamplingParamsError(name, f"must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise SamplingParamsError(name, f"must be finite, got {value}")
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SamplingParamsError(name, f"must be true or false, got {value!r}")
    return value


def _optional_str(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise SamplingParamsError(name, f"must be a string, got {type(value).__name__}")
    return value


def _schema(name: str, value: Any) -> str | None:
    """A JSON schema as text: SGLang sends a string; an object is accepted and serialised."""
    if isinstance(value, dict | bool):
        return json.dumps(value)
    return _optional_str(name, value)


def _at_least(low: int):
    def check(name: str, value: Any) -> int:
        value = _int(name, value)
        if value < low:
            raise SamplingParamsError(name, f"must be >= {low}, got {value}")
        return value

    return check


def _in_range(low: float, high: float, *, low_open: bool = False):
    def check(name: str, value: Any) -> float:
        value = _float(name, value)
        if value > high or value < low or (low_open and value == low):
            bracket = "(" if low_open else "["
            raise SamplingParamsError(name, f"must be in {bracket}{low}, {high}], got {value}")
        return value

    return check


def _temperature(name: str, value: Any) -> float:
    value = _float(name, value)
    if value < 0:
        raise SamplingParamsError(name, f"must be >= 0, got {value}")
    return value


def _repetition_penalty(name: str, value: Any) -> float:
    value = _float(name, value)
    if value <= 0:
        raise SamplingParamsError(name, f"must be > 0, got {value}")
    return value


def _top_k(name: str, value: Any) -> int:
    value = _int(name, value)
    if value < -1:
        raise SamplingParamsError(name, f"must be -1 or 0 (off) or >= 1, got {value}")
    return value


def _strings(name: str, value: Any) -> str | tuple[str, ...] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise SamplingParamsError(name, "must be a string or a list of strings")


def _regexes(name: str, value: Any) -> str | tuple[str, ...] | None:
    value = _strings(name, value)
    for pattern in (value,) if isinstance(value, str) else value or ():
        try:
            re.compile(pattern)
        except re.error as e:
            raise SamplingParamsError(name, f"invalid regular expression {pattern!r}: {e}") from e
    return value


def _token_ids(name: str, value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise SamplingParamsError(name, "must be a list of token ids")
    ids = tuple(_int(name, v) for v in value)
    if any(v < 0 for v in ids):
        raise SamplingParamsError(name, "token ids must be >= 0")
    return ids


def _seed(name: str, value: Any) -> int | None:
    return None if value is None else _int(name, value)


def _stream_interval(name: str, value: Any) -> int | None:
    return None if value is None else _at_least(1)(name, value)


def _token_key(name: str, key: Any) -> int:
    if isinstance(key, str):
        try:
            key = int(key.strip())
        except ValueError:
            raise SamplingParamsError(name, f"key {key!r} is not a token id") from None
    key = _int(name, key)
    if key < 0:
        raise SamplingParamsError(name, f"token id {key} must be >= 0")
    return key


LOGIT_BIAS_MAX = 100.0


def _logit_bias(name: str, value: Any) -> Mapping[int, float] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SamplingParamsError(name, "must be an object mapping token ids to numbers")
    bias: dict[int, float] = {}
    for key, b in value.items():
        b = _float(name, b)
        if not -LOGIT_BIAS_MAX <= b <= LOGIT_BIAS_MAX:  # OpenAI's range; float32-safe
            raise SamplingParamsError(name, f"biases must be within ±{LOGIT_BIAS_MAX:g}, got {b}")
        bias[_token_key(name, key)] = b
    return MappingProxyType(bias)


def _custom_params(name: str, value: Any) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SamplingParamsError(name, "must be an object")
    return MappingProxyType(dict(value))


CHECKS = {  # field -> its check
    "max_new_tokens": _at_least(0),
    "min_new_tokens": _at_least(0),
    "temperature": _temperature,
    "top_p": _in_range(0.0, 1.0, low_open=True),
    "top_k": _top_k,
    "min_p": _in_range(0.0, 1.0),
    "frequency_penalty": _in_range(-2.0, 2.0),
    "presence_penalty": _in_range(-2.0, 2.0),
    "repetition_penalty": _repetition_penalty,
    "stop": _strings,
    "stop_token_ids": _token_ids,
    "stop_regex": _regexes,
    "ignore_eos": _bool,
    "skip_special_tokens": _bool,
    "spaces_between_special_tokens": _bool,
    "no_stop_trim": _bool,
    "n": _at_least(1),
    "seed": _seed,
    "regex": _optional_str,
    "json_schema": _schema,
    "ebnf": _optional_str,
    "structural_tag": _optional_str,
    "logit_bias": _logit_bias,
    "custom_params": _custom_params,
    "stream_interval": _stream_interval,
}


