"""Constrained decoding: grammars (regex, JSON schema, EBNF) that mask the vocabulary.

`validate_grammar` checks a request's grammar without a tokenizer (the server
uses it to answer 400 before queueing); `make_backend` builds the backend the
scheduler compiles with; `GrammarCache` compiles each grammar once, in the
background.
"""

from __future__ import annotations

from typing import Any

from radixlm.grammar.base import GRAMMAR_KINDS, GrammarBackend, GrammarError, GrammarMatcher
from radixlm.grammar.cache import GrammarCache

BACKENDS = ("xgrammar", "none")

__all__ = [
    "BACKENDS",
    "GRAMMAR_KINDS",
    "GrammarBackend",
    "GrammarCache",
    "GrammarError",
    "GrammarMatcher",
    "make_backend",
    "validate_grammar",
]


def validate_grammar(kind: str, spec: str) -> None:
    """Raise GrammarError(kind, why) when (kind, spec) cannot be compiled by the default backend."""
    if kind not in GRAMMAR_KINDS:
        raise GrammarError(kind, "constrained decoding with this field is not supported")
    from radixlm.grammar.xgrammar_backend import parse_grammar

    parse_grammar(kind, spec)


def make_backend(
    name: str, hf_tokenizer: Any, vocab_size: int, stop_token_ids: tuple[int, ...]
) -> GrammarBackend | None:
    """The backend called `name` for this tokenizer ("none": constrained decoding off)."""
    if name == "none":
        return None
    if name == "xgrammar":
        from radixlm.grammar.xgrammar_backend import XGrammarBackend

        return XGrammarBackend(hf_tokenizer, vocab_size, stop_token_ids)
    raise ValueError(f"unknown grammar backend {name!r}; choose from {', '.join(BACKENDS)}")
