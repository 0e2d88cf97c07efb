"""The per-row sampling parameters of a batch as tensors, and the seeded random draws.

`SamplingBatch` is built once per batch composition; see `sampler.py` for the
order in which its fields are applied and for the seed semantics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from radixlm.sampling.params import SamplingParams

# ------------------------------------------------------------------ the batch


@dataclass(frozen=True)
class SamplingBatch:
    """The per-row sampling parameters of one batch as tensors, plus usage flags.

    Build it with `SamplingBatch.build`; it is immutable and stays valid for as
    long as the batch has the same requests in the same order (it holds no
    per-step state: output lengths are read from `output_ids` at each call).
    Rows whose feature is off hold neutral values, and each `need_*` flag is
    False when no sampled row uses the feature, so the step skips it.
    """

    size: int
    vocab_size: int
    device: torch.device
    greedy_mask: torch.Tensor  # [B] bool
    any_greedy: bool
    all_greedy: bool
    temperatures: torch.Tensor  # [B, 1] float32; 1.0 on greedy rows
    top_ks: torch.Tensor  # [B, 1] int64; vocab_size where off
    top_ps: torch.Tensor  # [B, 1] float32; 1.0 where off
    min_ps: torch.Tensor  # [B, 1] float32; 0.0 where off
    repetition_penalties: torch.Tensor  # [B, 1] float32; 1.0 where off
    frequency_penalties: torch.Tensor  # [B, 1] float32; 0.0 where off
    presence_penalties: torch.Tensor  # [B, 1] float32; 0.0 where off
    need_top_k: bool
    max_top_k: int  # largest top_k among rows that use it (0 if none)
    need_top_p: bool
    need_min_p: bool
    need_repetition: bool
    repetition_rows: tuple[bool, ...]  # per row: has a repetition penalty
    need_frequency: bool
    need_presence: bool
    bias_rows: torch.Tensor | None  # [N] int64, the (row, token, value) triples of logit_bias
    bias_cols: torch.Tensor | None  # [N] int64
    bias_values: torch.Tensor | None  # [N] float32
    min_new_tokens: tuple[int, ...]  # per row
    banned_rows: torch.Tensor | None  # [M] int64, (row, token) masked until min_new_tokens
    banned_cols: torch.Tensor | None  # [M] int64
    seeded_rows: tuple[int, ...]  # rows with a seed, ascending
    seeds: torch.Tensor | None  # [S] int64, the seeds of `seeded_rows` as 64-bit patterns

    @classmethod
    def build(
        cls,
        params: Sequence[SamplingParams],
        device: torch.device | str,
        vocab_size: int,
        eos_token_ids: Sequence[int] = (),
    ) -> SamplingBatch:
        """Turn the params of the batch's rows (in row order) into tensors on `device`.

        `vocab_size` must equal the last dimension of the logits passed to
        `sample`. Token ids >= `vocab_size` in `logit_bias` or `stop_token_ids`
        are ignored here (`SamplingParams.check_vocab` rejects them upfront).
        """
        if not params:
            raise ValueError("a sampling batch needs at least one row")
        device = torch.device(device)
        greedy = [p.is_greedy for p in params]
        scalars = torch.tensor(
            [_row_floats(p, g) for p, g in zip(params, greedy, strict=True)],
            dtype=torch.float32,
            device=device,
        )  # [B, 6]
        top_k_list = [_row_top_k(p, g, vocab_size) for p, g in zip(params, greedy, strict=True)]
        sampled = [p for p, g in zip(params, greedy, strict=True) if not g]
        used_k = [k for k in top_k_list if k < vocab_size]
        seeded_rows = tuple(i for i, p in enumerate(params) if p.seed is not None and not greedy[i])
        bias = _bias_entries(params, vocab_size, device)
        banned = _banned_entries(params, vocab_size, tuple(eos_token_ids), device)
        return cls(
            size=len(params),
            vocab_size=vocab_size,
            device=device,
            greedy_mask=torch.tensor(greedy, dtype=torch.bool, device=device),
            any_greedy=any(greedy),
            all_greedy=all(greedy),
            temperatures=scalars[:, 0:1],
            top_ps=scalars[:, 1:2],
            min_ps=scalars[:, 2:3],
            repetition_penalties=scalars[:, 3:4],
            frequency_penalties=scalars[:, 4:5],
            presence_penalties=scalars[:, 5:6],
            top_ks=torch.tensor(top_k_list, dtype=torch.long, device=device).view(-1, 1),
            need_top_k=bool(used_k),
            max_top_k=max(used_k, default=0),
            need_top_p=any(p.top_p < 1.0 for p in sampled),
            need_min_p=any(p.min_p > 0.0 for p in sampled),
            need_repetition=any(p.repetition_penalty != 1.0 for p in params),
            repetition_rows=tuple(p.repetition_penalty != 1.0 for p in params),
            need_frequency=any(p.frequency_penalty != 0.0 for p in params),
            need_presence=any(p.presence_penalty != 0.0 for p in params),
            bias_rows=bias[0],
            bias_cols=bias[1],
            bias_values=bias[2],
            min_new_tokens=tuple(p.min_new_tokens for p in params),
            banned_rows=banned[0],
            banned_cols=banned[1],
            seeded_rows=seeded_rows,
            seeds=_seed_tensor([params[i].seed for i in seeded_rows], device),
        )

    @property
    def need_penalties(self) -> bool:
        """True when any row has a repetition, frequency or presence penalty."""
        return self.need_repetition or self.need_frequency or self.need_presence

    def masking_rows(self, output_ids: Sequence[Sequence[int]]) -> list[bool]:
        """Per row: True while its eos/stop ids are masked (fewer than min_new_tokens outputs)."""
        return [len(o) < m for o, m in zip(output_ids, self.min_new_tokens, strict=True)]


def _row_floats(p: SamplingParams, greedy: bool) -> list[float]:
    """[temperature, top_p, min_p, repetition, frequency, presence] of one row."""
    if greedy:  # filters are irrelevant for an argmax; temperature 1 avoids a division by 0
        return [1.0, 1.0, 0.0, p.repetition_penalty, p.frequency_penalty, p.presence_penalty]
    return [
        p.temperature,
        p.top_p,
        p.min_p,
        p.repetition_penalty,
        p.frequency_penalty,
        p.presence_penalty,
    ]


def _row_top_k(p: SamplingParams, greedy: bool, vocab_size: int) -> int:
    """The row's top_k clamped to the vocabulary; vocab_size means off."""
    if greedy or p.top_k <= 0:
        return vocab_size
    return min(p.top_k, vocab_size)


def _bias_entries(
    params: Sequence[SamplingParams], vocab_size: int, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(rows, tokens, values) of every in-vocabulary logit_bias entry, or Nones."""
    rows: list[int] = []
    cols: list[int] = []
    values: list[float] = []
    for i, p in enumerate(params):
        for tok, b in (p.logit_bias or {}).items():
            if tok < vocab_size and b != 0.0:
                rows.append(i)
                cols.append(tok)
                values.append(b)
    if not rows:
        return None, None, None
    return (
        torch.tensor(rows, dtype=torch.long, device=device),
        torch.tensor(cols, dtype=torch.long, device=device),
        torch.tensor(values, dtype=torch.float32, device=device),
    )


def _banned_entries(
    params: Sequence[SamplingParams],
    vocab_size: int,
    eos_token_ids: tuple[int, ...],
    device: torch.device,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(rows, tokens) masked while a row is short of min_new_tokens: eos and stop ids."""
    rows: list[int] = []
    cols: list[int] = []
    for i, p in enumerate(params):
        if p.min_new_tokens <= 0:
            continue
        for tok in sorted(set(eos_token_ids) | set(p.stop_ids)):
            if 0 <= tok < vocab_size:
                rows.append(i)
                cols.append(tok)
    if not rows:
        return None, None
    return (
        torch.tensor(rows, dtype=torch.long, device=device),
        torch.tensor(cols, dtype=torch.long, device=device),
    )


# --------------------------------------------------------------- seeded noise

_MASK64 = (1 << 64) - 1


def _as_int64(x: int) -> int:
    """The signed 64-bit integer with the same bit pattern as `x mod 2**64`."""
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN = _as_int64(0x9E3779B97F4A7C15)
_MIX1 = _as_int64(0xBF58476D1CE4E5B9)
_MIX2 = _as_int64(0x94D049BB133111EB)


def _seed_tensor(seeds: list[int | None], device: torch.device) -> torch.Tensor | None:
    if not seeds:
        return None
    return torch.tensor([_as_int64(s) for s in seeds], dtype=torch.long, device=device)


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's `>>` is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on int64 tensors (multiplication wraps modulo 2**64)."""
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    return x ^ _shr(x, 31)


def seeded_uniform(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Uniforms in [0, 1) [S] float64 that are a pure function of (seed, step).

    seeds, steps: [S] int64. The value is the top 53 bits of the SplitMix64
    output `mix64(mix64(seed) + (step + 1) * golden)`, so it is identical on
    every device and whatever batch the row is in.
    """
    state = _mix64(seeds) + (steps.to(seeds.dtype) + 1) * _GOLDEN  # [S], wraps modulo 2**64
    bits = _shr(_mix64(state), 11)  # [S], 53 random bits
    return bits.to(torch.float64) * (2.0**-53)


def row_uniforms(
    batch: SamplingBatch,
    output_ids: Sequence[Sequence[int]],
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One uniform in [0, 1) per row [B, 1] float64: seeded rows by counter, others by RNG."""
    u = torch.empty((batch.size, 1), dtype=torch.float64, device=batch.device)  # [B, 1]
    if len(batch.seeded_rows) < batch.size:
        u.uniform_(generator=generator)
    if not batch.seeded_rows:
        return u
    steps = torch.tensor(
        [len(output_ids[i]) for i in batch.seeded_rows], dtype=torch.long, device=batch.device
    )
    rows = torch.tensor(batch.seeded_rows, dtype=torch.long, device=batch.device)
    u[rows, 0] = seeded_uniform(batch.seeds, steps)
    return u
