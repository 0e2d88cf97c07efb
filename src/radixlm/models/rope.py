"""Rotary position embeddings: inverse frequencies per scaling kind, and per-token cos/sin.

Kinds: none, linear, llama3 (a smoothly interpolated band) and longrope
(Phi-3: one set of per-frequency divisors for sequences up to the original
context, another beyond it, and a cos/sin multiplier). LongRoPE picks its set
per sequence and per forward, as transformers does: by the sequence's length
at the end of this forward. Keys already in the cache keep the rotation they
were written with (docs/models.md: the switch and the radix cache).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from radixlm.config import RopeScaling


def _base_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def rope_inv_freq(
    head_dim: int, theta: float, scaling: RopeScaling | None, long: bool = False
) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2] (float32), with the configured scaling applied.

    `long` picks LongRoPE's long-context divisors (ignored by the other kinds).
    """
    if scaling is None:
        return _base_inv_freq(head_dim, theta)
    if scaling.kind == "longrope":
        factors = scaling.long_factor if long else scaling.short_factor
        if len(factors) != head_dim // 2:
            raise ValueError(f"longrope factors: {len(factors)} given, {head_dim // 2} needed")
        shape = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        return 1.0 / (torch.tensor(factors, dtype=torch.float32) * theta**shape)
    inv_freq = _base_inv_freq(head_dim, theta)
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    # llama3: keep high frequencies, divide low ones by `factor`, blend the band between.
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    in_band = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(in_band, blended, scaled)


def longrope_attention_factor(scaling: RopeScaling) -> float:
    """The cos/sin multiplier of LongRoPE: given, else sqrt(1 + ln(factor) / ln(original))."""
    if scaling.attention_factor is not None:
        return float(scaling.attention_factor)
    if scaling.factor <= 1.0:
        return 1.0
    original = scaling.original_max_position_embeddings
    return math.sqrt(1 + math.log(scaling.factor) / math.log(original))


class Rotary:
    """cos/sin tables of one rope setting for the tokens of a forward.

    Holds float32 inverse frequencies on the model's device (two sets for
    LongRoPE). Safe to share between layers; rebuild after moving the model.
    """

    def __init__(
        self, head_dim: int, theta: float, scaling: RopeScaling | None, device: torch.device
    ) -> None:
        self.scaling = scaling
        with torch.device("cpu"):  # real tensors, even while a model is built on "meta"
            self._build(head_dim, theta, scaling, device)

    def _build(
        self, head_dim: int, theta: float, scaling: RopeScaling | None, device: torch.device
    ) -> None:
        self.inv_freq = rope_inv_freq(head_dim, theta, scaling).to(device)
        self.long_inv_freq: torch.Tensor | None = None
        self.mscale = 1.0
        if scaling is not None and scaling.kind == "longrope":
            self.long_inv_freq = rope_inv_freq(head_dim, theta, scaling, long=True).to(device)
            self.mscale = longrope_attention_factor(scaling)

    def cos_sin(
        self, positions: torch.Tensor, extend_lens: Sequence[int], dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, signed sin), each [T, 1, D] in `dtype`, for positions [T] int64.

        The sin has its first half negated (see ops.apply_rope_). `extend_lens`
        (the new tokens of each sequence, in order) is read only by LongRoPE.
        """
        inv = self.inv_freq.unsqueeze(0)  # [1, D/2]
        if self.long_inv_freq is not None:
            inv = self._longrope_inv_freq(positions, extend_lens)
        freqs = positions.to(torch.float32).unsqueeze(1) * inv  # [T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)  # [T, 1, D]
        half = freqs.shape[-1]
        cos, sin = emb.cos(), emb.sin()
        if self.mscale != 1.0:
            cos, sin = cos * self.mscale, sin * self.mscale
        sin[..., :half].neg_()
        return cos.to(dtype), sin.to(dtype)

    def _longrope_inv_freq(
        self, positions: torch.Tensor, extend_lens: Sequence[int]
    ) -> torch.Tensor:
        """[T, D/2]: the long set for tokens of sequences longer than the original context
        at the end of this forward, the short set for the others."""
        assert self.scaling is not None and self.long_inv_freq is not None
        lens = torch.tensor(list(extend_lens), device=positions.device)
        ends = torch.cumsum(lens, 0) - 1  # flat row of each sequence's last new token
        seq_len = torch.repeat_interleave(positions[ends] + 1, lens, output_size=len(positions))
        long = (seq_len > self.scaling.original_max_position_embeddings).unsqueeze(1)
        return torch.where(long, self.long_inv_freq.unsqueeze(0), self.inv_freq.unsqueeze(0))
