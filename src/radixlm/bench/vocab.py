"""Word tokens: token ids whose text round-trips, so prompts have exact token counts.

A workload draws its prompts from `WordVocab.ids`: tokens that decode to one space and
a lowercase word and encode back to that single id. A run of them decodes to text that
the tokenizer splits at every space into the same ids again, so a prompt sent as text
(the chat API) has the same tokens as one sent as ids (before any chat template).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_WORD = re.compile(r" [a-z]{2,}")


@dataclass(frozen=True)
class WordVocab:
    """The token ids workloads draw from (sorted, no duplicates)."""

    ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.ids) < 2:
            raise ValueError("a workload vocabulary needs at least two token ids")


def word_vocab(hf_tokenizer: Any) -> WordVocab:
    """The round-tripping word tokens of a `transformers` tokenizer.

    Falls back to every non-special id when the vocabulary has fewer than 16 word
    tokens (then only id-based backends keep the counts exact).
    """
    n = len(hf_tokenizer)
    texts = hf_tokenizer.batch_decode([[i] for i in range(n)])
    candidates = [i for i, text in enumerate(texts) if _WORD.fullmatch(text)]
    encoded = hf_tokenizer([texts[i] for i in candidates], add_special_tokens=False)["input_ids"]
    ids = [i for i, enc in zip(candidates, encoded, strict=True) if list(enc) == [i]]
    if len(ids) < 16:
        special = set(getattr(hf_tokenizer, "all_special_ids", []))
        ids = [i for i in range(n) if i not in special]
    return WordVocab(tuple(sorted(ids)))
