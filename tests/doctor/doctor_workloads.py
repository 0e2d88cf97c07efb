"""Prompt workloads for the doctor's tests: the published case and scrambled parts.

Texts stay short enough for the tiny models (512 positions) and use words the tiny
tokenizer was trained on, so they tokenize into a few hundred tokens.
"""

from __future__ import annotations

import random
import time
import uuid

SYSTEM = (
    "You are a helpful assistant for the serving engine. The scheduler admits requests "
    "while there is room, runs one decode step for all of them, and streams the tokens "
    "back to the client. Answer briefly and politely, and say when you do not know. "
) * 2
QUESTIONS = ("What is the capital of France?", "How are you today?", "Tell me a story.",
             "What is a serving engine?", "Why is the sky blue?")  # fmt: skip


def story_prompts(n: int, seed: int, fixed: bool) -> list[str]:
    """`n` prompts whose system prompt begins with the current time and a request id, or
    (`fixed`) with those two lines moved after the system prompt."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()) + f".{i % 1000:03d}"
        rid = uuid.UUID(int=rng.getrandbits(128)).hex[:12]
        dynamic = f"Current time: {stamp}\nRequest id: {rid}\n"
        q = rng.choice(QUESTIONS)
        out.append(f"{SYSTEM}\n{dynamic}{q}" if fixed else f"{dynamic}{SYSTEM}\n{q}")
    return out


DOCS = (
    "Document one: The quick brown fox jumps over the lazy dog, and then the fox runs "
    "back into the forest where it lives with its family of seven.",
    "Document two: Once upon a time there was a little robot who wanted to learn how to "
    "write stories, so it read every book in the library.",
    "Document three: Numbers such as 12, 345 and 6789 appear in prompts too, as do dates "
    "and times; a cache keeps what it has seen for the next request.",
    "Document four: Chat assistants, coding tools and few-shot classifiers share long "
    "system prompts, and retrieval pipelines share their documents.",
)


def scrambled_prompts(n: int, seed: int, order: list[int] | None = None) -> list[str]:
    """`n` prompts holding all of DOCS, each in a random order (or always in `order`)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ids = list(order) if order is not None else rng.sample(range(len(DOCS)), len(DOCS))
        body = "\n\n".join(DOCS[k] for k in ids)
        out.append(f"Answer from the documents.\n\n{body}\n\nQuestion {i}: {rng.choice(QUESTIONS)}")
    return out


def grouped_prompts(n: int, groups: int, seed: int) -> list[str]:
    """`n` prompts from `groups` long shared prefixes (a few sentences each), shuffled."""
    rng = random.Random(seed)
    heads = [f"Group {g}: " + " ".join(rng.sample(DOCS, 2)) for g in range(groups)]
    return [f"{rng.choice(heads)}\nQuestion {i}: {rng.choice(QUESTIONS)}" for i in range(n)]
