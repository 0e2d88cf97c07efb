"""What a workload is: requests made of role-tagged token parts, some waiting on a parent.

A request's prompt is its parent's full prompt, then the parent's answer (an assistant
part), then the request's own parts; a request without a parent is just its own parts.
So a multi-turn chat's turn t is a child of turn t-1, and a tree-of-thought's second
level a child of the first. Requests without a parent arrive on the run's schedule;
children are sent as soon as their parent's answer is in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Roles = ("system", "user", "assistant")


@dataclass(frozen=True)
class Part:
    """A run of prompt tokens with the chat role it would have as a message."""

    role: str
    ids: tuple[int, ...]


@dataclass(frozen=True)
class BenchRequest:
    """One request of a workload. `parent` is the index of an earlier request, or None."""

    index: int
    parts: tuple[Part, ...]
    output_len: int
    parent: int | None = None


@dataclass(frozen=True)
class Workload:
    """A named list of requests; `requests[i].index == i`, parents come before children."""

    name: str
    params: dict[str, Any]
    requests: tuple[BenchRequest, ...]
    notes: str = field(default="")

    def children(self) -> dict[int, list[BenchRequest]]:
        """Requests by their parent's index (children in index order)."""
        out: dict[int, list[BenchRequest]] = {}
        for r in self.requests:
            if r.parent is not None:
                out.setdefault(r.parent, []).append(r)
        return out

    def roots(self) -> list[BenchRequest]:
        """The requests that arrive on the schedule, in arrival order."""
        return [r for r in self.requests if r.parent is None]


def full_prompt(
    request: BenchRequest, parent_prompt: Sequence[Part] | None, parent_answer: Sequence[int]
) -> tuple[Part, ...]:
    """The parts a request sends, given its parent's prompt and answer (ignored for roots)."""
    if request.parent is None:
        return request.parts
    assert parent_prompt is not None
    return (*parent_prompt, Part("assistant", tuple(parent_answer)), *request.parts)


def prompt_ids(parts: Sequence[Part]) -> list[int]:
    """The token ids of a prompt: its parts concatenated."""
    return [t for p in parts for t in p.ids]


def resolve_offline(
    workload: Workload, answer: Callable[[BenchRequest], Sequence[int]]
) -> list[list[int]]:
    """Every request's prompt ids in index order, with `answer(request)` as each answer.

    For tests and for the expected oracle of a workload before it runs.
    """
    prompts: list[tuple[Part, ...]] = []
    for r in workload.requests:
        parent = prompts[r.parent] if r.parent is not None else None
        ans = answer(workload.requests[r.parent]) if r.parent is not None else ()
        prompts.append(full_prompt(r, parent, ans))
    return [prompt_ids(p) for p in prompts]
