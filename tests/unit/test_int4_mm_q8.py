"""int4 layers with int8 activations (`native/int4_mm_q8.cpp`) and `--activations`."""

from __future__ import annotations

import pytest
import torch

from radixlm.config import LoadConfig
from radixlm.loader.quantize import choose_activations, set_activations
from radixlm.models import quant
from radixlm.models.quant import Int4Linear, quantize_int4, unpack_int4

needs_kernel = pytest.mark.skipif(
    not quant.int8_activations_supported(),
    reason="int4_mm_q8 needs AVX512-VNNI, AVX512-VBMI and AVX512-BF16 (and a C++ compiler)",
)


def int4_layer(n: int, k: int, group: int, seed: int) -> Int4Linear:
    gen = torch.Generator().manual_seed(seed)
    return Int4Linear(*quantize_int4(torch.randn(n, k, generator=gen), group), None, group)


def q8_reference(x: torch.Tensor, layer: Int4Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """(the kernel's product in float64 from x quantized per row and group as documented:
    sa = max|x| / 127, xq = round(x * (127 / max|x|)) with ties to even; [M, N] the
    change one step of one xq makes: max sa of the row x max |w| of the output).

    The kernel's 127 / max|x| may differ from torch's in the last bit (fast math), which
    moves an xq that sits within that bit of a half by one step."""
    n, k, g = layer.out_features, layer.in_features, layer.group
    xg = x.float().reshape(x.shape[0], k // g, g)
    amax = xg.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    xq = torch.round(xg * inv).clamp(-127, 127)
    xd = (xq.double() * (amax.double() / 127)).reshape(x.shape[0], k)
    q = unpack_int4(layer.packed, n, k).double().reshape(n, k // g, g)
    sz = layer.scales_zeros.double()  # [K/G, N, 2]
    w = ((q - 8) * sz[..., 0].t()[..., None] + sz[..., 1].t()[..., None]).reshape(n, k)
    step = (amax.double() / 127).amax(1) * w.abs().amax(1)[None, :]  # [M, 1] * [1, N]
    return xd @ w.t(), step


# rows: every tail of the 6-row tile, one and several 48-row chunks
@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 7, 48, 50, 97])
@pytest.mark.parametrize(("n", "k", "group"), [(192, 96, 32), (64, 256, 64), (320, 64, 16)])
def test_int4_mm_q8_matches_the_product_of_the_quantized_rows(rows, n, k, group):
    layer = int4_layer(n, k, group, seed=rows * n + k)
    gen = torch.Generator().manual_seed(rows)
    x = (torch.randn(rows, k, generator=gen) * torch.rand(k, generator=gen) * 4).bfloat16()
    x[0, :group] = 0  # an all-zero group: scale 0, not NaN
    got = quant.kernels().int4_mm_q8(x, layer.packed, layer.scales_zeros, group)
    exact, step = q8_reference(x, layer)
    assert got.shape == (rows, n) and got.dtype == torch.bfloat16
    # one bfloat16 rounding of each output, float32 sums of the per-group terms, and at
    # most one xq a step away; a wrong nibble, scale or row is many steps
    bound = exact.abs() * 2**-8 + 1e-5 * exact.abs().max() + step
    assert ((got.double() - exact).abs() <= bound).all()
    # and close to the bfloat16 product itself: int8 costs ~1/254 of each group's peak
    dense = x.double() @ layer.dequantize().double().t()
    assert (got.double() - dense).norm() <= 0.02 * dense.norm()


@needs_kernel
def test_each_row_is_the_same_whatever_the_batch():
    """A row's output depends on that row alone: a prompt's K/V come out bit-identical
    whether it is prefilled alone or beside others (cache on and off agree)."""
    layer = int4_layer(256, 576, 32, seed=3)
    x = torch.randn(61, 576, generator=torch.Generator().manual_seed(4)).bfloat16()
    native = quant.kernels()
    batch = native.int4_mm_q8(x, layer.packed, layer.scales_zeros, 32)
    for lo, hi in ((0, 1), (5, 17), (40, 61)):
        part = native.int4_mm_q8(x[lo:hi], layer.packed, layer.scales_zeros, 32)
        assert torch.equal(part, batch[lo:hi])


@needs_kernel
def test_int4_layer_takes_int8_activations_only_past_the_direct_rows():
    layer = int4_layer(192, 96, 32, seed=5)
    gen = torch.Generator().manual_seed(6)
    wide = torch.randn(quant.DIRECT_MAX_ROWS + 9, 96, generator=gen).bfloat16()
    small = wide[: quant.DIRECT_MAX_ROWS]
    before_wide, before_small = layer(wide), layer(small)
    set_activations(torch.nn.Sequential(layer), "int8")
    assert layer.int8_activations
    expected = quant.kernels().int4_mm_q8(wide, layer.packed, layer.scales_zeros, 32)
    assert torch.equal(layer(wide), expected)
    assert not torch.equal(layer(wide), before_wide)  # the bfloat16 path differs somewhere
    assert torch.equal(layer(small), before_small)  # the decode rows keep bfloat16
    assert torch.equal(layer(wide.float()), expected.float())  # converted in and out


def test_choose_activations(monkeypatch):
    monkeypatch.setattr("radixlm.loader.quantize.int8_activations_supported", lambda: True)
    assert LoadConfig().activations == "bfloat16"  # int8 is asked for, never chosen
    assert choose_activations("int8", "int4") == ("int8", "as asked")
    assert choose_activations("bfloat16", "int4")[0] == "bfloat16"
    assert choose_activations("bfloat16", "none")[0] == "bfloat16"
    for mode in ("none", "int8"):
        with pytest.raises(ValueError, match="activations: int8 needs --quantization int4"):
            choose_activations("int8", mode)
    monkeypatch.setattr("radixlm.loader.quantize.int8_activations_supported", lambda: False)
    with pytest.raises(ValueError, match="AVX512-VNNI"):
        choose_activations("int8", "int4")


def test_load_config_names_a_bad_activations_mode():
    with pytest.raises(ValueError, match="activations: unknown mode 'int2'"):
        LoadConfig(activations="int2")
