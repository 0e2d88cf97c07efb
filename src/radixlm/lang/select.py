"""Scoring the choices of a `select` from prompt logprobs.

Each choice is sent as `prompt + choice` with `max_new_tokens: 0`, `return_logprob`,
`return_text_in_logprobs` and `logprob_start_len` a little before the end of the prompt
(`logprob_start`), so the answer carries the logprob and text of the last prompt tokens
and of every choice token. `choice_logprobs` keeps the tokens that hold any of the
choice's text. Token healing: when the tokenizer merges the end of the prompt with the
start of the choice (a prompt ending in a space, a choice starting with a word), the merged
token is the first one kept, so every choice is scored from the same point of the text.

Methods (`select(..., choices_method=...)`):
- `token_length_normalized` (default): the mean logprob of the choice's tokens, so long
  choices are not penalised for having more tokens.
- `sum`: the total logprob, i.e. the probability of the whole choice (favours short ones).
- `greedy`: the choice a greedy decoder would follow: compare the first tokens' logprobs,
  among the choices tied on the best first token compare the second, and so on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

METHODS = ("token_length_normalized", "sum", "greedy")

# Logprobs are asked from this many tokens before the end of the prompt, so that a token
# merged across the boundary (token healing) is still among the returned entries.
HEALING_WINDOW = 2


def logprob_start(prompt_tokens: int) -> int:
    """The `logprob_start_len` for a prompt of `prompt_tokens` tokens."""
    return max(prompt_tokens - HEALING_WINDOW, 0)


@dataclass(frozen=True)
class SelectResult:
    """The chosen index and text, every choice's score and its token logprobs."""

    index: int
    choice: str
    scores: list[float]
    token_logprobs: list[list[float]]

    def meta(self) -> dict[str, Any]:
        return {"scores": self.scores, "token_logprobs": self.token_logprobs}


def choice_logprobs(entries: list[list[Any]], choice: str) -> list[float]:
    """The logprobs of the tokens, among `entries` ([logprob, id, text]), that hold `choice`.

    The entries cover the end of the prompt and then the choice; walking back from the end,
    tokens are kept until their texts cover all of `choice`. Entries without a logprob
    (the first token of a sequence) are left out.
    """
    kept: list[float] = []
    covered = 0
    for logprob, _token_id, text in reversed(entries):
        if covered >= len(choice):
            break
        covered += len(text or "")
        if logprob is not None:
            kept.append(float(logprob))
    kept.reverse()
    return kept


def _greedy(token_logprobs: list[list[float]]) -> int:
    alive = list(range(len(token_logprobs)))
    position = 0
    while len(alive) > 1:
        at = [(token_logprobs[i][position], i) for i in alive if position < len(token_logprobs[i])]
        if not at:
            break
        best = max(lp for lp, _ in at)
        alive = [i for lp, i in at if lp >= best - 1e-6]
        position += 1
    return alive[0]


def pick(choices: list[str], token_logprobs: list[list[float]], method: str) -> SelectResult:
    """Choose among `choices` given each one's token logprobs; ties go to the earlier choice."""
    if method == "sum":
        scores = [sum(lps) for lps in token_logprobs]
    else:
        scores = [sum(lps) / len(lps) if lps else -math.inf for lps in token_logprobs]
    if method == "greedy":
        index = _greedy(token_logprobs)
    elif method in METHODS:
        index = max(range(len(choices)), key=lambda i: (scores[i], -i))
    else:
        raise ValueError(f"unknown choices_method {method!r}: expected one of {METHODS}")
    return SelectResult(index, choices[index], scores, token_logprobs)
