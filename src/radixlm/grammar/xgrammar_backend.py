"""The default grammar backend, on xgrammar (runs on CPU; masks apply on CPU or CUDA)."""

from __future__ import annotations

from typing import Any

import torch

from radixlm.grammar.base import GrammarError
from radixlm.grammar.schema_check import load_schema

# xgrammar (0.2.x) writes a JSON string's character class as [^\0-\x1f"\\\r\n], or as
# [^"\\\r\n] when the string has length bounds (which admits raw control characters,
# invalid JSON); both admit UTF-16 surrogate code points, whose UTF-8 form is not valid
# UTF-8 (text decodes them as U+FFFD, breaking maxLength). Both are swapped for the
# JSON character class without surrogates.
_STRING_CHAR_CLASSES = (r"[^\0-\x1f\"\\\r\n]", r"[^\"\\\r\n]")
_JSON_STRING_CHAR = r"[^\0-\x1f\"\\\ud800-\udfff]"


def _import_xgrammar() -> Any:
    import xgrammar

    return xgrammar


class XGrammarMatcher:
    """`GrammarMatcher` over an `xgrammar.GrammarMatcher`."""

    def __init__(self, matcher: Any) -> None:
        self._m = matcher

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self._m.fill_next_token_bitmask(bitmask, row)

    def accept_token(self, token_id: int) -> bool:
        return bool(self._m.accept_token(token_id))

    def is_terminated(self) -> bool:
        return bool(self._m.is_terminated())

    def jump_forward_string(self) -> str:
        return self._m.find_jump_forward_string()

    def rollback(self, num_tokens: int) -> None:
        self._m.rollback(num_tokens)


class XGrammarBackend:
    """Compile regex / JSON schema / EBNF for one Hugging Face tokenizer with xgrammar.

    `vocab_size` is the model's logit width (it may exceed the tokenizer's);
    `stop_token_ids` end a completed grammar (the model's eos ids). JSON is
    compact: no optional whitespace, `", "` and `": "` separators, so a
    schema's keys and punctuation are fixed strings (what jump-forward skips).
    """

    name = "xgrammar"

    def __init__(
        self, hf_tokenizer: Any, vocab_size: int, stop_token_ids: tuple[int, ...],
        max_threads: int = 1,
    ) -> None:  # fmt: skip
        xgr = _import_xgrammar()
        self._xgr = xgr
        self.vocab_size = vocab_size
        info = xgr.TokenizerInfo.from_huggingface(
            hf_tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids)
        )
        self._compiler = xgr.GrammarCompiler(info, max_threads=max_threads)

    # -- grammars --------------------------------------------------------------

    def compile(self, kind: str, spec: str) -> Any:
        grammar = parse_grammar(kind, spec)
        try:
            return self._compiler.compile_grammar(grammar)
        except Exception as e:
            raise GrammarError(kind, _clean_message(e)) from None

    def matcher(self, compiled: Any) -> XGrammarMatcher:
        return XGrammarMatcher(self._xgr.GrammarMatcher(compiled))

    # -- masks -----------------------------------------------------------------

    def allocate_bitmask(self, rows: int) -> torch.Tensor:
        return self._xgr.allocate_token_bitmask(rows, self.vocab_size)

    def apply_bitmask(self, logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
        mask = bitmask.to(logits.device, non_blocking=True)
        self._xgr.apply_token_bitmask_inplace(logits, mask, indices=rows)


def parse_grammar(kind: str, spec: str) -> Any:
    """An `xgrammar.Grammar` for (kind, spec), without a tokenizer; raises GrammarError(kind)."""
    xgr = _import_xgrammar()
    try:
        if kind == "regex":
            return xgr.Grammar.from_regex(spec)
        if kind == "ebnf":
            return xgr.Grammar.from_ebnf(spec)
        if kind == "json_schema":
            load_schema(kind, spec)
            g = xgr.Grammar.from_json_schema(spec, any_whitespace=False)
            text = fixed = str(g)
            for cls in _STRING_CHAR_CLASSES:
                fixed = fixed.replace(cls, _JSON_STRING_CHAR)
            return g if fixed == text else xgr.Grammar.from_ebnf(fixed)
    except GrammarError:
        raise
    except Exception as e:  # xgrammar raises RuntimeError/ValueError with a parser message
        raise GrammarError(kind, _clean_message(e)) from None
    raise GrammarError(kind, f"unknown grammar kind {kind!r}")


def _clean_message(e: Exception) -> str:
    """xgrammar's message without its '[time] file.cc:line:' prefix."""
    text = str(e).strip()
    if text.startswith("[") and ": " in text:
        text = text.split(": ", 1)[1]
    return text.splitlines()[0] if text else type(e).__name__
