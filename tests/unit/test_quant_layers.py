"""Quantized linear layers against their own dequantized weights, on both paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from radixlm import native
from radixlm.hugepages import pack_buffers
from radixlm.models import quant
from radixlm.models.quant import Int4Linear, Int8Linear, quantize_int4, quantize_int8, unpack_int4


def layers(w: torch.Tensor, bias: torch.Tensor | None):
    return {"int8": Int8Linear(*quantize_int8(w), bias),
            "int4": Int4Linear(*quantize_int4(w), bias)}  # fmt: skip


@pytest.mark.parametrize("rows", [1, 3, quant.DIRECT_MAX_ROWS, quant.DIRECT_MAX_ROWS + 1, 100])
@pytest.mark.parametrize("kind", ["int8", "int4"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_forward_matches_dequantized_weight(rows, kind, with_bias):
    gen = torch.Generator().manual_seed(rows)
    w = torch.randn(192, 96, generator=gen)
    bias = torch.randn(192, generator=gen) if with_bias else None
    layer = layers(w, bias)[kind]
    x = torch.randn(rows, 96, generator=gen).bfloat16()
    ref = x.float() @ layer.dequantize().float().t() + (0 if bias is None else bias)
    got = layer(x)
    assert got.shape == (rows, 192) and got.dtype == torch.bfloat16
    # two bfloat16 roundings (matmul output, bias add) of the largest output
    assert (got.float() - ref).abs().max().item() <= 2**-7 * ref.abs().max().item()
    assert layer(x.float()).dtype == torch.float32  # the caller's dtype comes back


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_dequantized_weight_is_close_to_the_original(kind):
    w = torch.randn(128, 64, generator=torch.Generator().manual_seed(0))
    layer = layers(w, None)[kind]
    step = w.abs().max() / (127 if kind == "int8" else 7)
    assert (layer.dequantize().float() - w).abs().max().item() <= step


def test_native_and_torch_int4_dequantize_agree(monkeypatch):
    w = torch.randn(256, 128, generator=torch.Generator().manual_seed(1))
    layer = layers(w, None)["int4"]
    native = layer.dequantize().clone()
    monkeypatch.setattr(quant, "kernels", lambda: None)
    fallback = layer.dequantize().float()
    # both round a float32 value once; the formulas differ, so at most one bfloat16 step
    assert ((fallback - native.float()).abs() <= native.float().abs() * 2**-7 + 1e-6).all()


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9, 16, 31, 32])
@pytest.mark.parametrize(("n", "k", "group"), [(192, 96, 32), (64, 256, 64), (320, 64, 32)])
def test_native_int4_mm_matches_the_exact_product(rows, n, k, group):
    native = quant.kernels()
    if native is None or not native.int4_mm_supported():
        pytest.skip("the native int4 kernel needs AVX512-BF16 and AVX512-VBMI")
    gen = torch.Generator().manual_seed(rows * n + k)
    layer = Int4Linear(*quantize_int4(torch.randn(n, k, generator=gen), group), None, group)
    x = torch.randn(rows, k, generator=gen).bfloat16()
    q = unpack_int4(layer.packed, n, k).double().reshape(n, k // group, group)
    sz = layer.scales_zeros.double()  # [K/G, N, 2]; the kernel does not round w to bf16
    w = (q - 8) * sz[..., 0].t()[..., None] + sz[..., 1].t()[..., None]
    exact = x.double() @ w.reshape(n, k).t()
    got = native.int4_mm(x, layer.packed, layer.scales_zeros, group)
    assert got.shape == (rows, n) and got.dtype == torch.bfloat16
    # one bfloat16 rounding of each output, plus float32 summation error
    bound = exact.abs() * 2**-8 + 1e-5 * exact.abs().max()
    assert ((got.double() - exact).abs() <= bound).all()


# past 8 rows the kernel tiles in bfloat16 (K % 32 == 0) or takes 8 rows at a time; the
# shapes leave tails of both tiles (rows % 4, n % 16)
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 9, 13, 32, 70])
@pytest.mark.parametrize(("n", "k"), [(100, 576), (64, 16), (1000, 48), (37, 64)])
def test_native_int8_mm_matches_the_exact_product(rows, n, k):
    native = quant.kernels()
    if native is None or not native.int8_mm_supported():
        pytest.skip("the native int8 kernel needs AVX-512")
    gen = torch.Generator().manual_seed(rows * n + k)
    layer = Int8Linear(*quantize_int8(torch.randn(n, k, generator=gen)), None)
    x = torch.randn(rows, k, generator=gen).bfloat16()
    exact = (x.double() @ layer.qweight.double().t()) * layer.scale.double()
    got = native.int8_mm(x, layer.qweight, layer.scale)
    assert got.shape == (rows, n) and got.dtype == torch.bfloat16
    # one bfloat16 rounding of each output, plus float32 summation error
    bound = exact.abs() * 2**-8 + 1e-5 * exact.abs().max()
    assert ((got.double() - exact).abs() <= bound).all()
    # and what the layer returns agrees with torch's kernel within those roundings
    torch_y = torch.ops.aten._weight_int8pack_mm(x, layer.qweight, layer.scale).double()
    assert ((layer.direct(x).double() - torch_y).abs() <= 2 * bound).all()


def test_native_int4_crossover_is_measured_once_per_build(monkeypatch, tmp_path):
    """The crossover is one of the candidates (or 1), kept beside the kernel build and
    read back by later calls; a damaged file is measured again."""
    if quant.kernels() is None or not quant.kernels().int4_mm_supported():
        pytest.skip("the native int4 kernel needs AVX512-BF16 and AVX512-VBMI")
    monkeypatch.setenv("RADIXLM_CACHE_DIR", str(tmp_path))
    rows = quant._measure_native_int4_rows()
    assert rows in (1, *quant.NATIVE_INT4_CANDIDATE_ROWS)
    if quant.kernels().int8_mm_supported():
        measured = quant._measure_native_int8_rows()
        assert measured in (0, *quant.NATIVE_INT8_CANDIDATE_ROWS[:-1], quant.NO_LIMIT)
    calls = []

    def measure() -> int:
        calls.append(1)
        return 7

    assert native.remembered("crossover-test", measure) == 7
    assert native.remembered("crossover-test", measure) == 7 and len(calls) == 1
    (saved,) = tmp_path.glob("kernels/*/crossover-test.json")
    saved.write_text("{not json")
    assert native.remembered("crossover-test", measure) == 7 and len(calls) == 2


def test_unpack_inverts_the_kernel_packing():
    q = torch.randint(0, 16, (128, 64), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    assert torch.equal(unpack_int4(packed, 128, 64).to(torch.int32), q)


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1])
def test_gguf_4bit_blocks_are_recovered_exactly(qtype):
    """quantize_int4 of a dequantized Q4_0/Q4_1 tensor finds the file's own nibbles and grid."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 128)).astype(np.float32)
    values = torch.from_numpy(dequantize(quantize(w, qtype), qtype).reshape(w.shape).copy())
    q, scale, zero = quantize_int4(values)
    back = (q - 8) * scale.repeat_interleave(32, 1) + zero.repeat_interleave(32, 1)
    assert (back - values).abs().max().item() <= 1e-5


def test_packed_buffers_share_one_block_and_keep_their_values():
    gen = torch.Generator().manual_seed(3)
    mods = [Int4Linear(*quantize_int4(torch.randn(64 * (i + 1), 64, generator=gen)), None)
            for i in range(3)] + [Int8Linear(*quantize_int8(torch.randn(40, 64, generator=gen)),
                                             torch.randn(40, generator=gen))]  # fmt: skip
    x = torch.randn(2, 64, generator=gen).bfloat16()
    before = [m(x) for m in mods]
    moved = pack_buffers([*mods, mods[0]])  # a module listed twice is packed once
    assert moved >= sum(b.numel() * b.element_size() for m in mods for b in m.buffers())
    assert len({b.untyped_storage().data_ptr() for m in mods for b in m.buffers()}) == 1
    # and the attributes the kernels read are those views (FastModule keeps them in step)
    read = {getattr(m, n).untyped_storage().data_ptr() for m in mods for n, _ in m.named_buffers()}
    assert len(read) == 1
    assert all(torch.equal(m(x), b) for m, b in zip(mods, before, strict=True))
