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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from radixlm.sampling.field_checks import CHECKS, SamplingParamsError

# A temperature below this samples greedily (SGLang treats it the same way).
GREEDY_TEMPERATURE_EPS = 1e-6

# Fields of which at most one may be set: each selects a grammar for constrained decoding.
GRAMMAR_FIELDS = ("regex", "json_schema", "ebnf", "structural_tag")

# Accepted in `from_dict` as another name for a field.
FIELD_ALIASES = {"sampling_seed": "seed"}


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
        for name, check in CHECKS.items():
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
