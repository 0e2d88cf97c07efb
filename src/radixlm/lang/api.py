"""The names a program is written with: gen, select, the roles, and the default backend.

    import radixlm.lang as rl

    @rl.function
    def qa(s, question):
        s += rl.user(question)
        s += rl.assistant(rl.gen("answer", max_tokens=64))

    rl.set_default_backend(rl.RuntimeEndpoint("http://127.0.0.1:30000"))
    print(qa.run(question="What is the capital of France?")["answer"])
"""

from __future__ import annotations

import json
from typing import Any

from radixlm.lang.backends.base import Backend, as_backend
from radixlm.lang.ir import (
    DTYPE_REGEX,
    Expr,
    Gen,
    RoleBegin,
    RoleEnd,
    SamplingOptions,
    Select,
    Sequence,
    Text,
)
from radixlm.lang.select import METHODS

_default_backend: Backend | None = None


def set_default_backend(backend: Any) -> Backend:
    """Make `backend` (a Backend, or a `radixlm.Engine`) the one `run` uses; returns it."""
    global _default_backend
    _default_backend = as_backend(backend)
    return _default_backend


def get_default_backend() -> Backend | None:
    """The backend set with `set_default_backend`, or None."""
    return _default_backend


def gen(
    name: str | None = None,
    max_tokens: int | None = None,
    stop: str | list[str] | None = None,
    stop_token_ids: list[int] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    min_p: float | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    ignore_eos: bool | None = None,
    regex: str | None = None,
    json_schema: str | dict[str, Any] | None = None,
    dtype: type | None = None,
) -> Gen:
    """Generate text at this point of the program, stored as `s[name]` when named.

    `dtype` (int, float, bool, str) constrains the text with a regex and stores the
    converted value; `regex` and `json_schema` constrain it directly (a JSON-schema
    variable holds the parsed object). Unset options take the backend's defaults
    (max_tokens: 128). Raises ValueError for conflicting constraints.
    """
    if dtype is not None and dtype is not str and dtype not in DTYPE_REGEX:
        raise ValueError(f"dtype must be int, float, bool or str, not {dtype!r}")
    if dtype in DTYPE_REGEX:
        if regex is not None:
            raise ValueError("give either dtype or regex, not both")
        regex = DTYPE_REGEX[dtype]
    if regex is not None and json_schema is not None:
        raise ValueError("give either regex or json_schema, not both")
    if isinstance(json_schema, dict):
        json_schema = json.dumps(json_schema)
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    options = SamplingOptions(
        max_tokens=max_tokens, stop=stops, stop_token_ids=tuple(stop_token_ids or ()),
        temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
        ignore_eos=ignore_eos, regex=regex, json_schema=json_schema,
    )  # fmt: skip
    return Gen(name, options, dtype)


def select(
    name: str | None = None,
    choices: list[str] | None = None,
    temperature: float = 0.0,
    choices_method: str = "token_length_normalized",
) -> Select:
    """Append the most likely of `choices` (stored as `s[name]` when named).

    Every choice is scored in one batched request from the logprobs of its tokens after
    the prompt; `choices_method` picks how: token_length_normalized (the mean, default),
    sum, or greedy (see `radixlm.lang.select`).
    """
    if not choices:
        raise ValueError("select needs a non-empty list of choices")
    if any(not isinstance(c, str) or not c for c in choices):
        raise ValueError("every choice must be a non-empty string")
    if choices_method not in METHODS:
        raise ValueError(f"choices_method must be one of {', '.join(METHODS)}")
    return Select(name, tuple(choices), choices_method, temperature)


def _as_expr(item: str | Expr) -> Expr:
    if isinstance(item, str):
        return Text(item)
    if isinstance(item, Expr):
        return item
    raise TypeError(f"a program can append text or gen/select/role expressions, not {item!r}")


def _role(role: str, content: str | Expr | list[str | Expr] | None) -> Expr:
    if content is None:
        return RoleBegin(role)
    items = content if isinstance(content, list) else [content]
    return Sequence((RoleBegin(role), *(_as_expr(i) for i in items), RoleEnd(role)))


def system(content: str | Expr | list[str | Expr] | None = None) -> Expr:
    """A system turn holding `content` (text, gen/select, or a list of them)."""
    return _role("system", content)


def user(content: str | Expr | list[str | Expr] | None = None) -> Expr:
    """A user turn holding `content` (text, gen/select, or a list of them)."""
    return _role("user", content)


def assistant(content: str | Expr | list[str | Expr] | None = None) -> Expr:
    """An assistant turn holding `content` (typically a `gen`)."""
    return _role("assistant", content)


def system_begin() -> Expr:
    return RoleBegin("system")


def system_end() -> Expr:
    return RoleEnd("system")


def user_begin() -> Expr:
    return RoleBegin("user")


def user_end() -> Expr:
    return RoleEnd("user")


def assistant_begin() -> Expr:
    return RoleBegin("assistant")


def assistant_end() -> Expr:
    return RoleEnd("assistant")


as_expr = _as_expr
