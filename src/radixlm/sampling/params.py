"""Per-request sampling parameters with SGLang's field names, defaults and checks.

`SamplingParams` is a frozen dataclass: construct it directly (every field is
validated in `__post_init__`) or from a JSON object with `from_dict`, which also
rejects unknown keys and treats `null` as "use the default" (SGLang clients send
every field, with `null` or `[]` for the ones they do not use).

Every invalid value raises `SamplingParamsError`, a `ValueError` whose `.field`
names the offending field, so a server can answer 400 with a precise message.

Normalisation done on construction (so equal requests compare equal):
- list-valued fields (`stop`, `stop_token_ids`, `stop_regex`) become tuples;
- integral floats in integer fields (`16.0`) become ints; ints in float fields
  become floats; booleans are never accepted where a number is expected;
- `logit_bias` keys become ints (JSON object keys arrive as strings) and the
  mapping becomes read-only, as does `custom_params`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

# A temperature below this samples greedily (SGLang treats it the same way).
GREEDY_TEMPERATURE_EPS = 1e-6

# Fields of which at most one may be set: each selects a grammar for constrained decoding.
GRAMMAR_FIELDS = ("regex", "json_schema", "ebnf", "structural_tag")

# Accepted in `from_dict` as another name for a field.
FIELD_ALIASES = {"sampling_seed": "seed"}


class SamplingParamsError(ValueError):
    """An invalid sampling parameter; `.field` names it and `.message` says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"sampling_params.{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How one request is decoded and when it stops (SGLang's `sampling_params`).

    Sampling: `temperature` (< 1e-6 means greedy), `top_k` (-1 or 0 = off; 1 =
    greedy), `top_p` in (0, 1], `min_p` in [0, 1]; penalties
    `repetition_penalty` (> 0, 1 = off; over prompt and output tokens),
    `frequency_penalty` and `presence_penalty` (in [-2, 2]; over output tokens);
    `logit_bias` (token id -> added logit); `seed` makes the draws reproducible.
    Stopping: `max_new_tokens`, `min_new_tokens` (eos and `stop_token_ids` are
    masked until that many tokens exist), `stop` strings, `stop_token_ids`,
    `stop_regex`, `ignore_eos` (eos does not stop; it is still sampleable).
    Detokenization: `skip_special_tokens`, `spaces_between_special_tokens`,
    `no_stop_trim`. Grammar (stored, at most one): `regex`, `json_schema`,
    `ebnf`, `structural_tag`. Also `n` (samples per prompt), `stream_interval`
    and `custom_params` (stored for the caller).
    """

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: str | Sequence[str] | None = None
    stop_token_ids: Sequence[int] | None = None
    stop_regex: str | Sequence[str] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    n: int = 1
    seed: int | None = None
    regex: str | None = None
    json_schema: str | None = None
    ebnf: str | None = None
    structural_tag: str | None = None
    logit_bias: Mapping[int, float] | None = field(default=None, hash=False)
    custom_params: Mapping[str, Any] | None = field(default=None, hash=False)
    stream_interval: int | None = None

    def __post_init__(self) -> None:
        for name, check in _CHECKS.items():
            value = check(name, getattr(self, name))
            object.__setattr__(self, name, value)
        _check_cross_fields(self)

    # Pickling (params cross the process boundary inside a request): the read-only
    # mappings travel as dicts and become read-only again; nothing is re-validated.
    def __getstate__(self) -> dict[str, Any]:
        return {k: dict(v) if isinstance(v, Mapping) else v for k, v in self.__dict__.items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, MappingProxyType(v) if isinstance(v, dict) else v)

    # ----------------------------------------------------------------- building

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> SamplingParams:
        """Build from a JSON-style object; `None` or `{}` gives the defaults.

        Keys are SGLang's field names (plus the alias `sampling_seed` for
        `seed`); a `None` value means "not given". Raises `SamplingParamsError`
        for an unknown key, a wrong type or an out-of-range value.
        """
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise SamplingParamsError("sampling_params", "must be a JSON object")
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        given_as: dict[str, str] = {}  # field -> the key the caller used (an alias or itself)
        for key, value in d.items():
            name = FIELD_ALIASES.get(key, key)
            if name not in known:
                raise SamplingParamsError(str(key), "unknown sampling parameter")
            if value is None:
                continue
            if name in kwargs and kwargs[name] != value:
                raise SamplingParamsError(key, f"conflicts with the value given for {name}")
            kwargs[name] = value
            given_as[name] = key
        try:
            return cls(**kwargs)
        except SamplingParamsError as e:
            if given_as.get(e.field, e.field) == e.field:
                raise
            raise SamplingParamsError(given_as[e.field], e.message) from None

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-friendly values; `from_dict(p.to_dict()) == p`."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out

    # ------------------------------------------------------------ derived views

    @property
    def is_greedy(self) -> bool:
        """True when the next token is always the argmax (temperature ~ 0 or top_k == 1)."""
        return self.temperature < GREEDY_TEMPERATURE_EPS or self.top_k == 1

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """The stop strings as a tuple, empty strings dropped."""
        if self.stop is None:
            return ()
        stops = (self.stop,) if isinstance(self.stop, str) else self.stop
        return tuple(s for s in stops if s)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """`stop_token_ids` as a tuple (empty when unset)."""
        return tuple(self.stop_token_ids or ())

    @property
    def stop_regexes(self) -> tuple[str, ...]:
        """`stop_regex` as a tuple of patterns (empty when unset)."""
        if self.stop_regex is None:
            return ()
        return (self.stop_regex,) if isinstance(self.stop_regex, str) else tuple(self.stop_regex)

    @property
    def grammar(self) -> tuple[str, str] | None:
        """`(kind, spec)` of the constrained-decoding grammar, or None when unset."""
        for name in GRAMMAR_FIELDS:
            value = getattr(self, name)
            if value is not None:
                return name, value
        return None

    @property
    def uses_penalties(self) -> bool:
        """True when repetition, frequency or presence penalty changes logits."""
        return (
            self.repetition_penalty != 1.0
            or self.frequency_penalty != 0.0
            or self.presence_penalty != 0.0
        )

    def check_vocab(self, vocab_size: int) -> None:
        """Raise `SamplingParamsError` if a token id in the params is >= `vocab_size`."""
        for tok in self.stop_ids:
            if tok >= vocab_size:
                raise SamplingParamsError(
                    "stop_token_ids", f"token id {tok} is outside the vocabulary ({vocab_size})"
                )
        for tok in self.logit_bias or {}:
            if tok >= vocab_size:
                raise SamplingParamsError(
                    "logit_bias", f"token id {tok} is outside the vocabulary ({vocab_size})"
                )


# ---------------------------------------------------------------- field checks
# Each check takes (field name, value) and returns the normalised value or raises.


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


def _logit_bias(name: str, value: Any) -> Mapping[int, float] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SamplingParamsError(name, "must be an object mapping token ids to numbers")
    bias: dict[int, float] = {}
    for key, b in value.items():
        bias[_token_key(name, key)] = _float(name, b)
    return MappingProxyType(bias)


def _custom_params(name: str, value: Any) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SamplingParamsError(name, "must be an object")
    return MappingProxyType(dict(value))


_CHECKS = {
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


def _check_cross_fields(p: SamplingParams) -> None:
    if p.min_new_tokens > p.max_new_tokens:
        raise SamplingParamsError(
            "min_new_tokens",
            f"must be <= max_new_tokens ({p.max_new_tokens}), got {p.min_new_tokens}",
        )
    grammars = [name for name in GRAMMAR_FIELDS if getattr(p, name) is not None]
    if len(grammars) > 1:
        raise SamplingParamsError(
            grammars[1], f"at most one of {', '.join(GRAMMAR_FIELDS)} may be set, got {grammars}"
        )
