"""The expressions a program appends to its state: text, gen, select, role markers.

They are plain frozen records; the interpreter gives them meaning. `gen(dtype=...)`
becomes a regex here, so every backend that supports `regex` supports dtypes too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# What a `gen` of each dtype may produce; the value is parsed back with `parse_typed`.
DTYPE_REGEX: dict[type, str] = {
    int: r"[-+]?[0-9]+",
    float: r"[-+]?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?",
    bool: r"(True|False)",
}


@dataclass(frozen=True)
class SamplingOptions:
    """The sampling fields a `gen` may set; None means the backend's default."""

    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    ignore_eos: bool | None = None
    regex: str | None = None
    json_schema: str | None = None

    def to_sampling_params(self, default_max_tokens: int) -> dict[str, Any]:
        """SGLang-shaped `sampling_params` with only the fields that are set."""
        sp: dict[str, Any] = {
            "max_new_tokens": default_max_tokens if self.max_tokens is None else self.max_tokens
        }
        for name in ("temperature", "top_p", "top_k", "min_p", "frequency_penalty",
                     "presence_penalty", "ignore_eos", "regex", "json_schema"):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                sp[name] = value
        if self.stop:
            sp["stop"] = list(self.stop)
        if self.stop_token_ids:
            sp["stop_token_ids"] = list(self.stop_token_ids)
        return sp

    @property
    def constrained(self) -> bool:
        return self.regex is not None or self.json_schema is not None


@dataclass(frozen=True)
class Expr:
    """Base of everything `s += ...` accepts besides a string.

    `"Q: " + gen("a")` and `gen("a") + "\\n"` make a Sequence, so expressions combine
    with text the way strings do.
    """

    def __add__(self, other: str | Expr) -> Sequence:
        return Sequence((*_items(self), *_items(other)))

    def __radd__(self, other: str | Expr) -> Sequence:
        return Sequence((*_items(other), *_items(self)))


@dataclass(frozen=True)
class Text(Expr):
    text: str


@dataclass(frozen=True)
class Gen(Expr):
    """Generate text into variable `name` (None: append without storing)."""

    name: str | None
    options: SamplingOptions
    dtype: type | None = None

    def parse(self, text: str) -> Any:
        """The variable's value: `text`, converted to `dtype` when one was asked for."""
        return parse_typed(text, self.dtype, self.options.json_schema is not None)


@dataclass(frozen=True)
class Select(Expr):
    """Pick one of `choices` into variable `name` by scoring (see `radixlm.lang.select`)."""

    name: str | None
    choices: tuple[str, ...]
    method: str = "token_length_normalized"
    temperature: float = 0.0


@dataclass(frozen=True)
class RoleBegin(Expr):
    role: str


@dataclass(frozen=True)
class RoleEnd(Expr):
    role: str


@dataclass(frozen=True)
class Sequence(Expr):
    """Several expressions appended in order (what `user("hi")` returns)."""

    items: tuple[Expr, ...] = field(default=())


def _items(item: str | Expr) -> tuple[Expr, ...]:
    """`item` as a flat tuple of expressions (a string becomes Text)."""
    if isinstance(item, str):
        return (Text(item),)
    if isinstance(item, Sequence):
        return item.items
    if isinstance(item, Expr):
        return (item,)
    return NotImplemented


def parse_typed(text: str, dtype: type | None, is_json: bool = False) -> Any:
    """`text` converted to `dtype` (int, float, bool, str) or parsed as JSON when `is_json`.

    Raises ValueError when the text is not of that type (a backend that ignored the regex).
    """
    if is_json:
        return json.loads(text)
    stripped = text.strip()
    if dtype is None or dtype is str:
        return text
    if dtype is bool:
        if stripped not in ("True", "False"):
            raise ValueError(f"expected True or False, got {text!r}")
        return stripped == "True"
    if dtype in (int, float):
        return dtype(stripped)
    raise ValueError(f"unsupported dtype {dtype!r}: use int, float, bool or str")
