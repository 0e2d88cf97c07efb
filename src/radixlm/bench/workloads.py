"""The workloads, deterministic from a seed, with exact token counts.

Every prompt part is drawn from a `WordVocab` with a seeded `random.Random`, so a
workload is a pure function of (name, parameters, seed, vocabulary). Lengths are in
tokens. `build_workload` picks one by name; `WORKLOADS` lists them with their defaults.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass

from radixlm.bench.vocab import WordVocab
from radixlm.bench.workload import BenchRequest, Part, Workload


class _Draw:
    """Seeded token runs from a vocabulary."""

    def __init__(self, vocab: WordVocab, seed: int) -> None:
        self.rng = random.Random(seed)
        self.ids = vocab.ids

    def run(self, role: str, n: int) -> Part:
        return Part(role, tuple(self.rng.choice(self.ids) for _ in range(n)))


@dataclass(frozen=True)
class SharedPrefix:
    """G groups x P prompts: a system prompt of S tokens per group, a Q-token question.

    Arrival order is shuffled (groups interleave), as requests of many users would."""

    groups: int = 4
    prompts_per_group: int = 8
    system_len: int = 1024
    question_len: int = 64
    output_len: int = 32


@dataclass(frozen=True)
class MultiTurn:
    """C conversations x T turns; each turn adds the previous answer and a new message."""

    conversations: int = 4
    turns: int = 4
    system_len: int = 256
    user_len: int = 64
    output_len: int = 32


@dataclass(frozen=True)
class FewShot:
    """One bank of K examples (E tokens each) after an instruction; a new question each."""

    requests: int = 16
    examples: int = 8
    example_len: int = 64
    instruction_len: int = 32
    question_len: int = 32
    output_len: int = 16


@dataclass(frozen=True)
class Rag:
    """D documents x Q questions: [system][tools][document][question], documents interleaved.

    `tools_len` 0 (the default) leaves the tools part out."""

    documents: int = 4
    questions_per_doc: int = 4
    system_len: int = 128
    tools_len: int = 0
    doc_len: int = 512
    question_len: int = 32
    output_len: int = 32


@dataclass(frozen=True)
class Scrambled(Rag):
    """`rag` where each request orders its [system, tools, document] parts at random."""

    tools_len: int = 128


@dataclass(frozen=True)
class Branching:
    """Tree of thought: a root prompt; N branches from it; N branches from each answer.

    Each branch adds a B-token instruction (which branch it is) to what came before."""

    branches: int = 3
    root_len: int = 512
    branch_len: int = 16
    output_len: int = 32


@dataclass(frozen=True)
class Unique:
    """N prompts of L tokens that share nothing (the overhead check)."""

    requests: int = 32
    prompt_len: int = 512
    output_len: int = 32


@dataclass(frozen=True)
class PrefixSweep:
    """TTFT against cached prefix length: for k = 0..steps, a prompt of L tokens, then a
    prompt sharing its first min(k L / steps, L - 1) tokens. Run it one request at a time
    (--max-concurrency 1) so that no queueing hides the prefill time."""

    prompt_len: int = 1024
    steps: int = 8
    output_len: int = 4


def _prefix_sweep(p: PrefixSweep, d: _Draw) -> list[BenchRequest]:
    out: list[BenchRequest] = []
    for k in range(p.steps + 1):
        primer = d.run("user", p.prompt_len)
        shared = min(round(p.prompt_len * k / p.steps), p.prompt_len - 1)
        tail = d.run("user", p.prompt_len - shared)
        probe = Part("user", primer.ids[:shared] + tail.ids)
        out += [BenchRequest(len(out), (primer,), p.output_len),
                BenchRequest(len(out) + 1, (probe,), p.output_len)]  # fmt: skip
    return out


def _shared_prefix(p: SharedPrefix, d: _Draw) -> list[BenchRequest]:
    systems = [d.run("system", p.system_len) for _ in range(p.groups)]
    parts = [
        (s, d.run("user", p.question_len)) for s in systems for _ in range(p.prompts_per_group)
    ]
    d.rng.shuffle(parts)
    return [BenchRequest(i, ps, p.output_len) for i, ps in enumerate(parts)]


def _multi_turn(p: MultiTurn, d: _Draw) -> list[BenchRequest]:
    out: list[BenchRequest] = []
    for _ in range(p.conversations):  # first turns first, so conversations run side by side
        parts = (d.run("system", p.system_len), d.run("user", p.user_len))
        out.append(BenchRequest(len(out), parts, p.output_len))
    for t in range(1, p.turns):
        for c in range(p.conversations):
            parent = (t - 1) * p.conversations + c
            out.append(BenchRequest(len(out), (d.run("user", p.user_len),), p.output_len, parent))
    return out


def _few_shot(p: FewShot, d: _Draw) -> list[BenchRequest]:
    bank = [d.run("system", p.instruction_len)]
    bank += [d.run("user", p.example_len) for _ in range(p.examples)]
    return [
        BenchRequest(i, (*bank, d.run("user", p.question_len)), p.output_len)
        for i in range(p.requests)
    ]


def _rag(p: Rag, d: _Draw, scramble: bool = False) -> list[BenchRequest]:
    system = d.run("system", p.system_len)
    tools = d.run("system", p.tools_len)
    docs = [d.run("user", p.doc_len) for _ in range(p.documents)]
    out: list[BenchRequest] = []
    for _ in range(p.questions_per_doc):  # question q of every document, then q + 1
        for doc in docs:
            context = [part for part in (system, tools, doc) if part.ids]
            if scramble:
                d.rng.shuffle(context)
            parts = (*context, d.run("user", p.question_len))
            out.append(BenchRequest(len(out), parts, p.output_len))
    return out


def _branching(p: Branching, d: _Draw) -> list[BenchRequest]:
    root = d.run("user", p.root_len)
    out = [BenchRequest(i, (root, d.run("user", p.branch_len)), p.output_len)
           for i in range(p.branches)]  # fmt: skip
    for parent in range(p.branches):
        for _ in range(p.branches):
            parts = (d.run("user", p.branch_len),)
            out.append(BenchRequest(len(out), parts, p.output_len, parent))
    return out


def _unique(p: Unique, d: _Draw) -> list[BenchRequest]:
    return [BenchRequest(i, (d.run("user", p.prompt_len),), p.output_len)
            for i in range(p.requests)]  # fmt: skip


WORKLOADS: dict[str, tuple[type, Callable]] = {
    "shared-prefix": (SharedPrefix, _shared_prefix),
    "multi-turn": (MultiTurn, _multi_turn),
    "few-shot": (FewShot, _few_shot),
    "rag": (Rag, _rag),
    "branching": (Branching, _branching),
    "unique": (Unique, _unique),
    "scrambled": (Scrambled, lambda p, d: _rag(p, d, scramble=True)),
    "prefix-sweep": (PrefixSweep, _prefix_sweep),
}


def workload_params(name: str, overrides: dict[str, int] | None = None) -> object:
    """The parameter dataclass of workload `name` with `overrides`; ValueError names a bad one."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; one of {', '.join(WORKLOADS)}")
    cls = WORKLOADS[name][0]
    fields = {f.name for f in dataclasses.fields(cls)}
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise ValueError(f"{name}: no parameter {key!r}; one of {', '.join(sorted(fields))}")
        if value < 0 or (value == 0 and key not in ("tools_len",)):
            raise ValueError(f"{name}: {key} must be positive")
    return cls(**(overrides or {}))


def build_workload(
    name: str, vocab: WordVocab, seed: int = 0, overrides: dict[str, int] | None = None
) -> Workload:
    """Workload `name` with its defaults updated by `overrides`, drawn from `vocab`."""
    params = workload_params(name, overrides)
    requests = WORKLOADS[name][1](params, _Draw(vocab, seed))
    return Workload(name, dataclasses.asdict(params), tuple(requests), params.__doc__ or "")


def describe_workloads() -> str:
    """One paragraph per workload: its name, what it is, its parameters and defaults."""
    lines = []
    for name, (cls, _) in WORKLOADS.items():
        doc = " ".join((cls.__doc__ or "").split())
        defaults = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cls()).items())
        lines.append(f"{name}: {doc}\n    {defaults}")
    return "\n".join(lines)
