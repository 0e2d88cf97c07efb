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


def outlier_mask(x: torch.Tensor, count: int, ratio: float) -> torch.Tensor:
    """[M, K] True at each row's outliers as documented: up to `count` inputs with |x| above
    `ratio` x the row's RMS, the largest first, ties to the lower index."""
    a = x.float().abs()
    bar = ratio * x.float().pow(2).mean(1, keepdim=True).sqrt()
    order = torch.sort(-a, dim=1, stable=True).indices[:, :count]  # equal |x|: lower first
    taken = torch.zeros_like(a, dtype=torch.bool).scatter_(1, order, True)
    return taken & (a > bar)


def q8_reference(
    x: torch.Tensor, layer: Int4Linear, outliers: int = 0, ratio: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the kernel's product in float64 from x quantized per row and group as documented,
    after each row's outliers are taken out and multiplied exactly: sa = max|x| / 127,
    xq = round(x * (127 / max|x|)) with ties to even; [M, N] the change one step of one
    xq makes: max sa of the row x max |w| of the output).

    The kernel's 127 / max|x| may differ from torch's in the last bit (fast math), which
    moves an xq that sits within that bit of a half by one step."""
    n, k, g = layer.out_features, layer.in_features, layer.group
    out = outlier_mask(x, outliers, ratio)
    rest = torch.where(out, torch.zeros_like(x), x)
    xg = rest.float().reshape(x.shape[0], k // g, g)
    amax = xg.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    xq = torch.round(xg * inv).clamp(-127, 127)
    xd = (xq.double() * (amax.double() / 127)).reshape(x.shape[0], k)
    xd = xd + torch.where(out, x, torch.zeros_like(x)).double()
    q = unpack_int4(layer.packed, n, k).double().reshape(n, k // g, g)
    sz = layer.scales_zeros.double()  # [K/G, N, 2]
    w = ((q - 8) * sz[..., 0].t()[..., None] + sz[..., 1].t()[..., None]).reshape(n, k)
    step = (amax.double() / 127).amax(1) * w.abs().amax(1)[None, :]  # [M, 1] * [1, N]
    return xd @ w.t(), step


def with_outliers(x: torch.Tensor, gen: torch.Generator, ratio: float) -> torch.Tensor:
    """x with a few channels 10-40x the rest (a residual stream's), and no input within 2%
    of `ratio` x its row's RMS (where float32 sums in another order could decide either way)."""
    x = x.float()
    for c in torch.randperm(x.shape[1], generator=gen)[:5]:
        x[:, c] *= 10 + 30 * torch.rand(1, generator=gen).item()
    bar = ratio * x.pow(2).mean(1, keepdim=True).sqrt()
    near = (x.abs() / bar - 1).abs() < 0.02
    return torch.where(near, x * 0.9, x).bfloat16()


# rows: every tail of the 6-row tile, one and several 48-row chunks
# (outliers, ratio): none; up to 8 above 4x the RMS (the layers' setting); the 3 largest
# of every row whatever their size (ratio 0: selection and ties alone)
@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 7, 48, 50, 97])
@pytest.mark.parametrize(("n", "k", "group"), [(192, 96, 32), (64, 256, 64), (320, 64, 16)])
@pytest.mark.parametrize(("outliers", "ratio"), [(0, 0.0), (8, 4.0), (3, 0.0)])
def test_int4_mm_q8_matches_the_product_of_the_quantized_rows(rows, n, k, group, outliers, ratio):
    layer = int4_layer(n, k, group, seed=rows * n + k)
    gen = torch.Generator().manual_seed(rows)
    x = (torch.randn(rows, k, generator=gen) * torch.rand(k, generator=gen) * 4).bfloat16()
    if outliers and ratio:
        x = with_outliers(x, gen, ratio)
    x[0, :group] = 0  # an all-zero group: scale 0, not NaN
    got = quant.kernels().int4_mm_q8(x, layer.packed, layer.scales_zeros, group, outliers, ratio)
    exact, step = q8_reference(x, layer, outliers, ratio)
    assert got.shape == (rows, n) and got.dtype == torch.bfloat16
    # one bfloat16 rounding of each output, float32 sums of the per-group terms, and at
    # most one xq a step away; a wrong nibble, scale, row or outlier is many steps
    bound = exact.abs() * 2**-8 + 1e-5 * exact.abs().max() + step
    assert ((got.double() - exact).abs() <= bound).all()
    # and close to the bfloat16 product itself: int8 costs ~1/254 of each group's peak
    dense = x.double() @ layer.dequantize().double().t()
    assert (got.double() - dense).norm() <= 0.02 * dense.norm()


@needs_kernel
def test_outliers_taken_out_cut_the_error_of_a_residual_stream():
    """Channels 10-40x the rest each set their group's int8 scale; taken out (the layers'
    setting), the error to the bfloat16 product falls by more than half."""
    layer = int4_layer(256, 576, 32, seed=8)
    gen = torch.Generator().manual_seed(9)
    x = with_outliers(torch.randn(64, 576, generator=gen), gen, quant.INT8_OUTLIER_RATIO)
    dense = x.double() @ layer.dequantize().double().t()
    native = quant.kernels()

    def error(outliers: int) -> float:
        got = native.int4_mm_q8(x, layer.packed, layer.scales_zeros, 32, outliers,
                                quant.INT8_OUTLIER_RATIO)  # fmt: skip
        return ((got.double() - dense).norm() / dense.norm()).item()

    assert outlier_mask(x, quant.INT8_OUTLIERS, quant.INT8_OUTLIER_RATIO).sum(1).min() >= 1
    assert error(quant.INT8_OUTLIERS) < 0.5 * error(0)


@needs_kernel
def test_each_row_is_the_same_whatever_the_batch():
    """A row's output depends on that row alone: a prompt's K/V come out bit-identical
    whether it is prefilled alone or beside others (cache on and off agree)."""
    layer = int4_layer(256, 576, 32, seed=3)
    x = torch.randn(61, 576, generator=torch.Generator().manual_seed(4)).bfloat16()
    native = quant.kernels()
    x = with_outliers(x, torch.Generator().manual_seed(5), quant.INT8_OUTLIER_RATIO)
    args = (layer.packed, layer.scales_zeros, 32, quant.INT8_OUTLIERS, quant.INT8_OUTLIER_RATIO)
    batch = native.int4_mm_q8(x, *args)
    for lo, hi in ((0, 1), (5, 17), (40, 61)):
        part = native.int4_mm_q8(x[lo:hi], *args)
        assert torch.equal(part, batch[lo:hi])


@needs_kernel
def test_int4_layer_with_int8_activations_takes_them_at_every_batch():
    """Decode batches too (the native layer loop's INT4_Q8 kind calls the same kernel), so
    a row's values do not depend on how many rows its batch has."""
    layer = int4_layer(192, 96, 32, seed=5)
    gen = torch.Generator().manual_seed(6)
    wide = torch.randn(quant.DIRECT_MAX_ROWS + 9, 96, generator=gen).bfloat16()
    before = {rows: layer(wide[:rows]) for rows in (1, quant.DIRECT_MAX_ROWS, len(wide))}
    assert layer.direct_rows() == quant.DIRECT_MAX_ROWS
    set_activations(torch.nn.Sequential(layer), "int8")
    assert layer.int8_activations and layer.direct_rows() == quant.NO_LIMIT
    expected = quant.kernels().int4_mm_q8(wide, layer.packed, layer.scales_zeros, 32,
                                          quant.INT8_OUTLIERS, quant.INT8_OUTLIER_RATIO)
    for rows, bf16 in before.items():
        assert torch.equal(layer(wide[:rows]), expected[:rows])
        assert not torch.equal(expected[:rows], bf16)  # the bfloat16 path differs somewhere
    assert torch.equal(layer(wide.float()), expected.float())  # converted in and out


def test_choose_activations(monkeypatch):
    monkeypatch.setattr("radixlm.loader.quantize.int8_activations_supported", lambda: True)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert LoadConfig().activations == "auto"
    assert choose_activations("auto", "int4", cpu) == ("int8", "auto: int4 weights, AVX512-VNNI")
    assert choose_activations("int8", "int4", cpu) == ("int8", "as asked")
    assert choose_activations("bfloat16", "int4", cpu) == ("bfloat16", "as asked")
    for mode, device in (("none", cpu), ("int8", cpu), ("int4", cuda)):
        assert choose_activations("auto", mode, device)[0] == "bfloat16"
    for mode in ("none", "int8"):
        with pytest.raises(ValueError, match="activations: int8 needs --quantization int4"):
            choose_activations("int8", mode, cpu)
    with pytest.raises(ValueError, match="activations: int8 runs on the CPU only"):
        choose_activations("int8", "int4", cuda)
    monkeypatch.setattr("radixlm.loader.quantize.int8_activations_supported", lambda: False)
    assert choose_activations("auto", "int4", cpu) == (
        "bfloat16", "auto: int8 needs AVX512-VNNI, AVX512-VBMI and AVX512-BF16")
    with pytest.raises(ValueError, match="AVX512-VNNI"):
        choose_activations("int8", "int4", cpu)


def test_load_config_names_a_bad_activations_mode():
    with pytest.raises(ValueError, match="activations: unknown mode 'int2'"):
        LoadConfig(activations="int2")
