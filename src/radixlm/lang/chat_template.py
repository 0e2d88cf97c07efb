"""Chat templates for programs: what text each role's turn starts and ends with.

A program writes its conversation one piece at a time (`s += user("hi")`, then a `gen`),
so it needs the template as per-role prefixes and suffixes rather than as a function of
the whole message list. `ChatTemplate.from_jinja` derives them from a model's Jinja chat
template by rendering a few probe conversations and cutting them at the probe contents;
`named_template` and `template_for_model_path` give built-in ones (for servers that do not
send their template, as an SGLang server does not).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")

# Sentinels that no template rewrites (they contain no whitespace to strip).
_PROBE = {"system": "\x01SYS\x01", "user": "\x01USR\x01", "assistant": "\x01AST\x01"}

Render = Callable[[list[dict[str, str]], bool], str]


@dataclass(frozen=True)
class ChatTemplate:
    """Role prefixes and suffixes; `default_system_prompt` opens a chat that lacks one.

    `prefixes[role] + content + suffixes[role]` is one turn. `stop` lists strings that end
    an assistant turn (a `gen` inside `assistant()` stops at them).
    """

    name: str
    prefixes: dict[str, str]
    suffixes: dict[str, str]
    default_system_prompt: str | None = None
    stop: tuple[str, ...] = field(default=())

    def prefix(self, role: str) -> str:
        """The text that opens a `role` turn; raises ValueError for an unknown role."""
        if role not in self.prefixes:
            raise ValueError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
        return self.prefixes[role]

    def suffix(self, role: str) -> str:
        """The text that closes a `role` turn."""
        return self.suffixes[role]

    @classmethod
    def from_jinja(cls, source: str, name: str = "model", **special_tokens: str) -> ChatTemplate:
        """Derive the roles of Jinja template `source` (rendered as transformers renders it).

        `special_tokens` (bos_token, eos_token, ...) reach the template; bos_token defaults
        to "" because the backend's tokenizer adds bos itself when the model wants one.
        Raises ValueError when the template does not render the probe conversations as
        separate turns.
        """
        return derive_template(jinja_renderer(source, **special_tokens), name)


def jinja_renderer(source: str, **special_tokens: str) -> Render:
    """A function rendering messages through `source` the way transformers does."""
    from datetime import datetime

    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    template = env.from_string(source)
    tokens = {"bos_token": "", "eos_token": "", **special_tokens}

    def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return template.render(
            messages=messages, add_generation_prompt=add_generation_prompt, **tokens
        )

    return render


def _cut(text: str, probe: str) -> tuple[str, str]:
    """(before, after) of the one occurrence of `probe` in `text`."""
    before, sep, after = text.partition(probe)
    if not sep:
        raise ValueError("the chat template dropped a message's content")
    return before, after


def derive_template(render: Render, name: str = "model") -> ChatTemplate:
    """Per-role prefixes and suffixes of the template that `render` applies (see module doc).

    Probes: [user], [user, assistant], [system, user]. The suffix of a role is what follows
    its content when the chat ends there; the rest between two contents is the next prefix.
    """
    sys_, usr, ast = (_PROBE[r] for r in ROLES)
    msg = lambda role: {"role": role, "content": _PROBE[role]}  # noqa: E731
    lone_user = render([msg("user")], False)
    before_user, user_suffix = _cut(lone_user, usr)
    with_reply = render([msg("user"), msg("assistant")], False)
    between, assistant_suffix = _cut(_cut(with_reply, usr)[1], ast)
    if not between.startswith(user_suffix):
        raise ValueError("the chat template's user turn ends differently before a reply")
    assistant_prefix = between[len(user_suffix) :]
    try:
        with_system = render([msg("system"), msg("user")], False)
    except Exception:  # templates without a system role
        with_system = None
    default_system = None
    if with_system is None:
        system_prefix, system_suffix, user_prefix = "", "", before_user
    else:
        system_prefix, rest = _cut(with_system, sys_)
        between_su = _cut(rest, usr)[0]
        if between_su.startswith(user_suffix):  # turns end alike (ChatML, Llama-3)
            n = len(between_su) - len(user_suffix)
        else:  # the user prefix: the common tail of what precedes a user turn either way
            n = 0
            limit = min(len(between_su), len(before_user))
            while n < limit and between_su[-1 - n] == before_user[-1 - n]:
                n += 1
        user_prefix = between_su[len(between_su) - n :]
        system_suffix = between_su[: len(between_su) - n]
        if not before_user.endswith(user_prefix):
            raise ValueError("the chat template opens a user turn differently after a system one")
        default_block = before_user[: len(before_user) - n]
        if default_block.startswith(system_prefix) and default_block.endswith(system_suffix):
            inner = default_block[len(system_prefix) : len(default_block) - len(system_suffix)]
            default_system = inner or None
    stop = tuple(s for s in {assistant_suffix.strip()} if s)
    return ChatTemplate(
        name=name,
        prefixes={"system": system_prefix, "user": user_prefix, "assistant": assistant_prefix},
        suffixes={"system": system_suffix, "user": user_suffix, "assistant": assistant_suffix},
        default_system_prompt=default_system,
        stop=stop,
    )


def _chatml(default_system: str | None = None, name: str = "chatml") -> ChatTemplate:
    roles = {r: f"<|im_start|>{r}\n" for r in ROLES}
    return ChatTemplate(name, roles, dict.fromkeys(ROLES, "<|im_end|>\n"), default_system,
                        ("<|im_end|>",))  # fmt: skip


def _llama3() -> ChatTemplate:
    roles = {r: f"<|start_header_id|>{r}<|end_header_id|>\n\n" for r in ROLES}
    return ChatTemplate("llama-3", roles, dict.fromkeys(ROLES, "<|eot_id|>"), None,
                        ("<|eot_id|>",))  # fmt: skip


_NAMED: dict[str, Callable[[], ChatTemplate]] = {
    "default": lambda: ChatTemplate(
        "default",
        {"system": "SYSTEM: ", "user": "USER: ", "assistant": "ASSISTANT: "},
        dict.fromkeys(ROLES, "\n"),
    ),
    "chatml": _chatml,
    "smollm2": lambda: _chatml(
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face", "smollm2"
    ),
    "llama-3": _llama3,
}

# Substrings of a model path (lower case) and the template such models use.
_PATH_HINTS = (("smollm2", "smollm2"), ("qwen", "chatml"), ("llama-3", "llama-3"),
               ("llama3", "llama-3"))  # fmt: skip


def named_template(name: str) -> ChatTemplate:
    """A built-in template: default, chatml, smollm2, llama-3; raises ValueError otherwise."""
    if name not in _NAMED:
        raise ValueError(f"unknown chat template {name!r}: expected one of {', '.join(_NAMED)}")
    return _NAMED[name]()


def template_for_model_path(path: str) -> ChatTemplate:
    """The built-in template a model path suggests, or the plain `default` one."""
    lowered = path.lower()
    for hint, name in _PATH_HINTS:
        if hint in lowered:
            return named_template(name)
    return named_template("default")


def resolve_template(spec: ChatTemplate | str | None, fallback: Callable[[], Any]) -> ChatTemplate:
    """`spec` as a template (a name is looked up), or `fallback()` when it is None."""
    if isinstance(spec, ChatTemplate):
        return spec
    if isinstance(spec, str):
        return named_template(spec)
    return fallback()
