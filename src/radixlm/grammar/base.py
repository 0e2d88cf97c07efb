"""The constrained-decoding interface: what the scheduler needs from a grammar library.

A *backend* turns a grammar (kind, spec) into a compiled object once per
tokenizer, and a compiled grammar into per-request *matchers*. The kinds are
`regex`, `json_schema` (a JSON Schema document as text) and `ebnf`. One
backend (xgrammar) ships; llguidance or outlines-core would implement the
same two protocols.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

GRAMMAR_KINDS = ("regex", "json_schema", "ebnf")


class GrammarError(ValueError):
    """A grammar that cannot be used; `field` names the request field that holds it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class GrammarMatcher(Protocol):
    """One request's position in its grammar. Not thread-safe: one scheduler thread uses it."""

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the tokens allowed next into row `row` of a backend bitmask."""

    def accept_token(self, token_id: int) -> bool:
        """Advance over `token_id`; False (state unchanged) when the grammar forbids it."""

    def is_terminated(self) -> bool:
        """True once the grammar is complete and has accepted its stop token."""

    def jump_forward_string(self) -> str:
        """The text every continuation must start with from here ('' when there is a choice)."""

    def rollback(self, num_tokens: int) -> None:
        """Undo the last `num_tokens` accepted tokens."""


class GrammarBackend(Protocol):
    """Compiles grammars for one tokenizer and applies token masks to logits."""

    name: str

    def compile(self, kind: str, spec: str) -> Any:
        """The compiled grammar (slow: seconds for a big schema). Raises GrammarError."""

    def matcher(self, compiled: Any) -> GrammarMatcher:
        """A fresh matcher at the start of `compiled`."""

    def allocate_bitmask(self, rows: int) -> torch.Tensor:
        """A bitmask for `rows` requests (CPU tensor, backend-specific layout)."""

    def apply_bitmask(self, logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
        """Set the disallowed tokens of logits[rows] ([B, V]) to -inf, in place.

        Row `rows[i]` of `logits` is masked by bitmask row `rows[i]`.
        """
