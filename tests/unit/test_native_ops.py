"""The fused native elementwise ops against their plain-torch forms (`models.ops`)."""

from __future__ import annotations

import pytest
import torch

from radixlm import native
from radixlm.models import ops

pytestmark = pytest.mark.skipif(
    native.kernels() is None, reason="native kernels did not build (needs g++ and ninja)"
)
# float32: summation order only; bfloat16: one rounding vs the torch form's several.
TOL = {torch.float32: 1e-5, torch.bfloat16: 2**-6}


def both(fn, *args):
    """(native result, torch result) of `fn` on copies of `args`."""
    got = fn(*[a.clone() for a in args])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ops, "kernels", lambda: None)
        ref = fn(*[a.clone() for a in args])
    return got, ref


def close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    scale = b.float().abs().max().clamp(min=1.0)
    return (a.float() - b.float()).abs().max().item() <= TOL[dtype] * scale.item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 7, 300])
def test_rms_norm_and_residual_add(dtype, rows):
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 576, generator=gen).to(dtype)
    delta = torch.randn(rows, 576, generator=gen).to(dtype)
    w = (1 + 0.1 * torch.randn(576, generator=gen)).to(dtype)
    got, ref = both(lambda a: ops.rms_norm(a, w, 1e-5), x)
    assert got.dtype == dtype and close(got, ref, dtype)

    def add_then_norm(a, d):
        return a, ops.add_rms_norm(a, d, w, 1e-5)

    (gx, gn), (rx, rn) = both(add_then_norm, x, delta)
    assert torch.equal(gx, rx)  # the residual stream gets x + delta in place, rounded once
    assert close(gn, rn, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_in_place_rotates_only_q_and_k(dtype):
    gen = torch.Generator().manual_seed(0)
    t, heads, rotary, d = 5, 15, 12, 64
    qkv = torch.randn(t, heads, d, generator=gen).to(dtype)
    angle = torch.randn(t, 1, d // 2, generator=gen)
    cos = torch.cat([angle.cos()] * 2, -1).to(dtype)
    sin = torch.cat([-angle.sin(), angle.sin()], -1).to(dtype)

    def rotate(x):
        ops.apply_rope_(x, cos, sin, rotary)
        return x

    got, ref = both(rotate, qkv)
    assert torch.equal(got[:, rotary:], qkv[:, rotary:])  # v heads untouched
    assert close(got, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul(dtype):
    gu = torch.randn(9, 2 * 1536, generator=torch.Generator().manual_seed(1)).to(dtype)
    got, ref = both(ops.silu_mul, gu)
    assert got.shape == (9, 1536) and close(got, ref, dtype)


@pytest.mark.parametrize("width", [1536, 37])  # 37: the 16-lane loop leaves a scalar tail
def test_silu_mul_bfloat16_rounds_once(width):
    """bfloat16 output is the float64 result rounded once, up to one step where that result
    sits within the float32 exp's error of a rounding boundary; large |gate| saturates."""
    gu = (8 * torch.randn(33, 2 * width, generator=torch.Generator().manual_seed(2))).bfloat16()
    gu[0, 0], gu[0, 1], gu[0, width], gu[0, width + 1] = 100.0, -100.0, 3.0, 3.0
    got = ops.silu_mul(gu).double()
    g, u = gu[:, :width].double(), gu[:, width:].double()
    exact = g * torch.sigmoid(g) * u
    step = 2.0 ** (torch.floor(torch.log2(exact.abs().clamp(min=1e-30))) - 7)
    diff = (got - exact.bfloat16().double()).abs()
    assert (diff <= step).all() and (diff > 0).float().mean().item() < 0.01
    assert got[0, 0].item() == exact.bfloat16()[0, 0].item() and got[0, 1].item() == 0.0
