"""llama.cpp's rotary frequency factors (`rope_freqs.weight`) -> a llama3 RopeScaling.

GGUF files of Llama 3.1+ store the per-frequency divisors rather than the
scaling parameters; these helpers recover parameters that reproduce them.
"""

from __future__ import annotations

import math

import numpy as np

from radixlm.config import RopeScaling
from radixlm.models.llama import rope_inv_freq

_LLAMA3_DEFAULT_ORIGINAL_CONTEXT = 8192


def f32_short(value: float) -> float:
    """A float32 metadata value as the shortest decimal that round-trips (1e-05, not 9.99e-06)."""
    return float(str(np.float32(value)))


def rope_scaling_from_freq_factors(
    factors: np.ndarray, head_dim: int, theta: float, original_context: int | None = None
) -> RopeScaling | None:
    """Find the rope scaling whose per-frequency divisors equal `factors` [head_dim // 2].

    llama.cpp stores llama3 rope scaling as the divisor of each rotary
    frequency. Returns None when every divisor is 1, linear scaling when all
    are equal, else llama3 parameters that reproduce every divisor (relative error 1e-5):
    Llama 3's usual band first, else one fitted to the divisors. Raises
    ValueError when none does.
    """
    factors = np.asarray(factors, dtype=np.float64)
    if np.allclose(factors, 1.0, rtol=1e-6, atol=0.0):
        return None
    factor = float(factors.max())
    if np.allclose(factors, factor, rtol=1e-6, atol=0.0):
        return RopeScaling(kind="linear", factor=f32_short(factor))
    base = rope_inv_freq(head_dim, theta, None).double().numpy()  # [head_dim // 2]
    original = int(original_context or _LLAMA3_DEFAULT_ORIGINAL_CONTEXT)
    usual = RopeScaling(
        kind="llama3", factor=f32_short(factor), original_max_position_embeddings=original
    )
    candidates = [usual]
    fitted = _fit_llama3_band(factors, 2 * math.pi / base, factor, original)
    if fitted is not None:
        candidates += [_with_unit_low_freq_factor(fitted), fitted]
    for candidate in candidates:
        scaled = rope_inv_freq(head_dim, theta, candidate).double().numpy()
        if np.allclose(base / scaled, factors, rtol=1e-5, atol=0.0):
            return candidate
    raise ValueError(
        "rope_freqs.weight holds rotary frequency factors that no llama3 rope scaling "
        "reproduces; this kind of rope scaling is not supported"
    )


def _fit_llama3_band(
    factors: np.ndarray, wavelen: np.ndarray, factor: float, original: int
) -> RopeScaling | None:
    """Llama3 parameters (for context `original`) whose band fits `factors`; None if none fit.

    With x = original / wavelen, a divisor f is 1 where x >= high (short
    wavelengths), `factor` where x <= low (long ones), and in between
    1/f = (1 - s)/factor + s with s = (x - low) / (high - low), linear in x.
    """
    kept = np.isclose(factors, 1.0, rtol=1e-4)
    full = np.isclose(factors, factor, rtol=1e-4)
    band = ~(kept | full)
    x = original / wavelen  # [head_dim // 2]
    s = (1.0 / factors[band] - 1.0 / factor) / (1.0 - 1.0 / factor)
    # The band must lie between the full-scaled and the kept frequencies.
    x_full_max = float(x[full].max(initial=-np.inf))
    x_kept_min = float(x[kept].min(initial=np.inf))
    if band.sum() >= 2:
        width, low = np.polyfit(s, x[band], 1)  # x = low + s * width
    elif band.sum() == 1:
        low, width = _band_through_point(float(x[band][0]), float(s[0]), x_full_max, x_kept_min)
    elif np.isfinite(x_full_max) and np.isfinite(x_kept_min):  # edges inside the gap
        low = x_full_max ** (2 / 3) * x_kept_min ** (1 / 3)
        width = x_full_max ** (1 / 3) * x_kept_min ** (2 / 3) - low
    else:
        return None
    if not (low > 0 and width > 0):
        return None
    return RopeScaling(
        kind="llama3",
        factor=f32_short(factor),
        low_freq_factor=float(low),
        high_freq_factor=float(low + width),
        original_max_position_embeddings=original,
    )


def _band_through_point(
    x0: float, s0: float, x_full_max: float, x_kept_min: float
) -> tuple[float, float]:
    """(low, width) of a band through the one in-band point (x0, s0).

    Prefers Llama 3's high = 4 * low; narrows the band when that would swallow
    a neighbouring frequency (x_full_max below it, x_kept_min above it).
    """
    width = 3.0 * x0 / (1.0 + 3.0 * s0)
    if s0 > 0:
        width = min(width, (x0 - x_full_max) / s0)
    if s0 < 1:
        width = min(width, (x_kept_min - x0) / (1.0 - s0))
    return x0 - s0 * width, width


def _with_unit_low_freq_factor(scaling: RopeScaling) -> RopeScaling:
    """The same llama3 band expressed with low_freq_factor 1 (as published configs write it).

    Only the ratios context / low and context / high matter, so dividing all
    three by `low` changes nothing but readability (the context is rounded).
    """
    low = scaling.low_freq_factor
    return RopeScaling(
        kind="llama3",
        factor=scaling.factor,
        low_freq_factor=1.0,
        high_freq_factor=f32_short(scaling.high_freq_factor / low),
        original_max_position_embeddings=max(
            1, round(scaling.original_max_position_embeddings / low)
        ),
    )
