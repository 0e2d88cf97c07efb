"""Weight-only quantized linear layers and embeddings on PyTorch's own CPU kernels.

Two formats, both with bfloat16 activations (the kernels are ~10x slower on float32):

- int8: one scale per output row, `w = q * scale`, q in [-127, 127].
  radixlm's `int8_mm` runs every batch where it beats `aten._weight_int8pack_mm`.
- int4: groups of `group_size` consecutive inputs per output row share a scale
  and a zero point, `w = (q - 8) * scale + zero`, q in [0, 15] (the form
  `aten._weight_int4pack_mm_for_cpu` computes). The nibbles are kept in that
  kernel's layout: output rows in blocks of 64; for each input k, byte j of a
  block holds row j (low nibble) and row j + 32 (high nibble).

The int4 kernels do one matrix-vector pass per input row, so their cost grows
linearly with the rows of x. Past DIRECT_MAX_ROWS rows (prefill, large
batches) an int4 layer dequantizes its weight to bfloat16 for the call and runs
a dense matmul. With `int8_activations` (set by `--activations auto|int8` where
AVX512-VNNI runs) it instead quantizes x to int8 per row and group, each row's
few outlier inputs kept in float32, and sums the products in int32 at every
batch (`native/int4_mm_q8.cpp`, ~1.3x the dense matmul). Nothing is cached, so
resident memory stays quantized.
An int8 layer takes that path only where radixlm's kernel is not built or lost
to torch's at some measured batch (`native_int8_max_rows`): past 8 rows the
kernel widens blocks of the weight to bfloat16 in cache, and on an AMD EPYC it
beat dequantize-then-matmul at every batch up to 128 rows (benchmarks/epyc_zen4.md).

Quantization from float weights (`quantize_int8`, `quantize_int4`) uses the
row's absolute maximum (int8) and, per group, the better of a min/max and a
symmetric grid (int4). GGUF Q4_0 and Q4_1 weights dequantized to float32 are
recovered exactly this way (up to the bfloat16 rounding of scale and zero);
Q8_0 rows requantized per channel, and K-quants, are close, not exact.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from radixlm.models.fast_module import FastModule
from radixlm.native import kernels, remembered

log = logging.getLogger(__name__)

# Rows of x up to which the quantized kernel beats dequantize + dense matmul (the crossover
# measured on a 2-core AVX-512 CPU for SmolLM2's projections, benchmarks/quantization.md).
DIRECT_MAX_ROWS = 32
# Row counts at which `native_int4_max_rows` times radixlm's int4 kernel against torch's.
# Which is faster depends on the CPU (benchmarks/bench_int4_mm.py): on an Intel Xeon with
# AMX torch's won from 4 rows, on an AMD EPYC (Zen 4) ours was 1.6x faster at 32.
NATIVE_INT4_CANDIDATE_ROWS = (2, 4, 8, 16, 32)
# The same for the int8 output head (`native_int8_max_rows`). Winning at the last candidate
# means winning at every batch: past it, both kernels' costs grow linearly with the rows.
NATIVE_INT8_CANDIDATE_ROWS = (1, 2, 4, 8, 16, 32, 64, 128)
NO_LIMIT = 1 << 62
INT4_GROUP = 32
# int8 activations take out, per row, up to INT8_OUTLIERS inputs above INT8_OUTLIER_RATIO
# times the row's RMS and multiply them in float32: the residual stream's outlier channels
# (10-30x the others in SmolLM2), each of which would otherwise set its group's int8 scale.
INT8_OUTLIERS = 8
INT8_OUTLIER_RATIO = 4.0
INT4_BLOCK_ROWS = 64  # the int4 kernel packs output rows in blocks of this many


_SCRATCH: dict[tuple[int, int], torch.Tensor] = {}


def _scratch(n: int, k: int) -> torch.Tensor:
    """A reused [n, k] bfloat16 buffer (fresh pages per call cost more than the dequantize)."""
    buf = _SCRATCH.get((n, k))
    if buf is None:
        buf = _SCRATCH[(n, k)] = torch.empty(n, k, dtype=torch.bfloat16)
    return buf


@functools.cache
def native_int4_max_rows() -> int:
    """Rows of x up to which int4 layers call radixlm's kernel (`native/int4_mm.cpp`)
    instead of torch's: 0 where it is not built or not supported, else the largest of
    NATIVE_INT4_CANDIDATE_ROWS at which it and every smaller candidate timed faster
    (at least 1: one row is where it was written to win). Measured once per machine
    (`native.remembered`), in about 0.1 s."""
    native = kernels()
    if native is None or not native.int4_mm_supported():
        return 0
    return remembered("int4_mm_max_rows", _measure_native_int4_rows)


def _measure_native_int4_rows() -> int:
    """The crossover of `native_int4_max_rows`, on a 3072 x 576 weight."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (3072, 576), generator=gen, dtype=torch.int32)
    scale = torch.full((3072, 576 // INT4_GROUP), 0.01)
    layer = Int4Linear(q, scale, torch.zeros_like(scale), None)
    native = kernels()

    def ours(x: torch.Tensor) -> torch.Tensor:
        return native.int4_mm(x, layer.packed, layer.scales_zeros, INT4_GROUP)

    def theirs(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            x, layer.packed, INT4_GROUP, layer.scales_zeros
        )

    rows = max(1, _crossover(ours, theirs, NATIVE_INT4_CANDIDATE_ROWS, 576, gen))
    log.info("int4 matmul: radixlm's kernel up to %d rows of x, torch's above", rows)
    return rows


@functools.cache
def native_int8_max_rows() -> int:
    """Rows of x up to which int8 layers (the output head) call radixlm's kernel
    (`native/int8_mm.cpp`) instead of torch's: the largest of NATIVE_INT8_CANDIDATE_ROWS
    at which it and every smaller candidate timed faster (NO_LIMIT when that is the last
    one), 0 where none did or it is not built. Measured once per machine
    (`native.remembered`)."""
    native = kernels()
    if native is None or not native.int8_mm_supported():
        return 0
    return remembered("int8_mm_max_rows", _measure_native_int8_rows)


def _measure_native_int8_rows() -> int:
    """The crossover of `native_int8_max_rows`, on an 8192 x 576 weight."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(-127, 128, (8192, 576), generator=gen, dtype=torch.int8)
    scale = torch.full((8192,), 0.01, dtype=torch.bfloat16)
    native = kernels()
    rows = _crossover(
        lambda x: native.int8_mm(x, q, scale),
        lambda x: torch.ops.aten._weight_int8pack_mm(x, q, scale),
        NATIVE_INT8_CANDIDATE_ROWS, 576, gen,
    )  # fmt: skip
    if rows == NATIVE_INT8_CANDIDATE_ROWS[-1]:
        log.info("int8 matmul: radixlm's kernel at every batch")
        return NO_LIMIT
    log.info("int8 matmul: radixlm's kernel up to %d rows of x, torch's above", rows)
    return rows


def _crossover(
    ours: Callable[[torch.Tensor], torch.Tensor],
    theirs: Callable[[torch.Tensor], torch.Tensor],
    candidates: tuple[int, ...],
    k: int,
    gen: torch.Generator,
) -> int:
    """The largest of `candidates` (ascending) at which `ours` and every smaller candidate
    took less time than `theirs` on x [rows, k] bfloat16 (best of 7 calls each), or 0."""

    def best(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
        fn(x)
        times = []
        for _ in range(7):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
        return min(times)

    rows = 0
    for m in candidates:
        x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
        if best(ours, x) >= best(theirs, x):
            break
        rows = m
    return rows


def int8_activations_supported() -> bool:
    """Whether int4 layers can take int8 activations here (`int4_mm_q8` is built)."""
    native = kernels()
    return native is not None and native.int4_mm_q8_supported()


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q [N, K] int8, scale [N] float32) with w ~ q * scale[:, None]; w is [N, K] float."""
    w = w.float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(
    w: torch.Tensor, group: int = INT4_GROUP
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q [N, K] int32 in [0, 15], scale [N, K/group], zero [N, K/group]) for w [N, K].

    w ~ (q - 8) * scale + zero. Two grids are tried per group and the one with the
    smaller worst-case error kept: min/max (min at q = 0, max at q = 15; exact for
    GGUF Q4_1 and Q4_K sub-blocks) and symmetric about 0 with the largest magnitude
    at 8 steps (exact for GGUF Q4_0).
    """
    n, k = w.shape
    g = w.float().reshape(n, k // group, group)
    lo, hi = g.amin(dim=2), g.amax(dim=2)
    candidates = []
    scale = ((hi - lo) / 15).clamp(min=1e-12)
    candidates.append((scale, lo + 8 * scale))
    scale = (torch.maximum(hi, -lo) / 8).clamp(min=1e-12)
    candidates.append((scale, torch.where(hi > -lo, scale, torch.zeros_like(scale))))
    best = None
    for scale, zero in candidates:
        q = torch.round((g - zero[..., None]) / scale[..., None] + 8).clamp(0, 15)
        err = ((q - 8) * scale[..., None] + zero[..., None] - g).abs().amax(dim=2)
        if best is None:
            best = (q, scale, zero, err)
            continue
        take = err < best[3]
        best = (torch.where(take[..., None], q, best[0]), torch.where(take, scale, best[1]),
                torch.where(take, zero, best[2]), torch.minimum(err, best[3]))  # fmt: skip
    assert best is not None
    q, scale, zero, _ = best
    return q.to(torch.int32).reshape(n, k), scale, zero


def int4_supported(n: int, k: int, group: int = INT4_GROUP) -> bool:
    """Whether an [n, k] weight fits the int4 kernel's blocking."""
    return n % INT4_BLOCK_ROWS == 0 and k % group == 0 and k % 2 == 0


def unpack_int4(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The [n, k] uint8 nibbles (0..15) of a weight in the int4 kernel's layout."""
    b = packed.view(torch.uint8).reshape(n // INT4_BLOCK_ROWS, k, INT4_BLOCK_ROWS // 2)
    both = torch.stack((b & 15, b >> 4), dim=2)  # [N/64, K, 2, 32]: rows j and j + 32
    return both.reshape(n // INT4_BLOCK_ROWS, k, INT4_BLOCK_ROWS).transpose(1, 2).reshape(n, k)


class WeightOnlyLinear(FastModule):
    """y = x @ W.T + bias for a quantized W: `direct` (the kernel) up to `direct_rows()`
    rows of x, else a dense bf16 matmul on `dequantize()`. Returns x's dtype."""

    in_features: int
    out_features: int
    bias: torch.Tensor | None

    def direct(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, K] bfloat16 -> [M, N] bfloat16 through the quantized kernel."""
        raise NotImplementedError

    def dequantize(self) -> torch.Tensor:
        """The weight [N, K] in bfloat16."""
        raise NotImplementedError

    def direct_rows(self) -> int:
        """Rows of x up to which `direct` beats dequantize-then-matmul."""
        return DIRECT_MAX_ROWS

    def native_rows(self) -> int:
        """Rows of x up to which `direct` calls radixlm's kernel rather than torch's."""
        return 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        limit = self.direct_rows()
        plain = x.dim() == 2 and x.dtype == torch.bfloat16 and self.bias is None
        if plain and x.shape[0] <= limit:  # the decode step: nothing to convert
            return self.direct(x)
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = self.direct(x2) if x2.shape[0] <= limit else F.linear(x2, self.dequantize())
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


class Int8Linear(WeightOnlyLinear):
    """y = x @ (q * scale).T + bias, with q [N, K] int8 and scale [N] (bfloat16)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.register_buffer("qweight", q.contiguous())
        self.register_buffer("scale", scale.to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if bias is None else bias.to(torch.bfloat16))

    def dequantize(self) -> torch.Tensor:
        """The weight [N, K] in bfloat16 (a new tensor)."""
        return self.qweight.to(torch.bfloat16) * self.scale[:, None]

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows `idx` (any shape) of the weight in float32: [*idx.shape, K]."""
        return self.qweight[idx].float() * self.scale[idx, None].float()

    def direct_rows(self) -> int:
        return max(DIRECT_MAX_ROWS, self.native_rows())

    def native_rows(self) -> int:
        return native_int8_max_rows() if self.in_features % 16 == 0 else 0

    def direct(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= self.native_rows():
            return kernels().int8_mm(x, self.qweight, self.scale)
        return torch.ops.aten._weight_int8pack_mm(x, self.qweight, self.scale)


class Int4Linear(WeightOnlyLinear):
    """y = x @ W.T + bias, W = (q - 8) * scale + zero per group of `group` inputs.

    packed: [N, K/2] uint8 in the int4 kernel's layout; scales_zeros: [K/group, N, 2] bfloat16.
    `int8_activations` (set by the loader, `--activations auto|int8`; only where
    `int8_activations_supported()`): every batch goes to `int4_mm_q8`, which quantizes x to
    int8 instead of dequantizing W.
    """

    int8_activations = False

    def __init__(
        self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
        bias: torch.Tensor | None, group: int = INT4_GROUP,
    ) -> None:  # fmt: skip
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.group = group
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
        self.register_buffer("packed", packed)
        sz = torch.stack((scale.t(), zero.t()), dim=-1).to(torch.bfloat16).contiguous()
        self.register_buffer("scales_zeros", sz)
        self.register_buffer("bias", None if bias is None else bias.to(torch.bfloat16))

    def dequantize(self) -> torch.Tensor:
        """The weight [N, K] in bfloat16 (with the native kernel, the transposed view of a
        [K, N] scratch buffer shared by every layer of this shape): valid until the next
        dequantize (the engine runs one forward at a time)."""
        n, k, g = self.out_features, self.in_features, self.group
        native = kernels()
        if native is not None:
            out_t = _scratch(k, n)  # the kernel writes W.T; its transpose view is W
            native.int4_dequantize(self.packed, self.scales_zeros, out_t, g)
            return out_t.t()
        q = unpack_int4(self.packed, n, k).float().reshape(n, k // g, g)
        sz = self.scales_zeros.float()
        scale, zero = sz[..., 0].t()[..., None], sz[..., 1].t()[..., None]  # [N, K/g, 1]
        return ((q - 8) * scale + zero).reshape(n, k).to(torch.bfloat16)

    def native_rows(self) -> int:
        return native_int4_max_rows()

    def direct_rows(self) -> int:
        # int8 activations: one kernel at every batch (level with int4_mm at 1-8 rows of a
        # decode step, faster at 32: benchmarks/epyc_zen4.md), so a row's values never
        # depend on the batch's size
        return NO_LIMIT if self.int8_activations else DIRECT_MAX_ROWS

    def direct(self, x: torch.Tensor) -> torch.Tensor:
        if self.int8_activations:
            return kernels().int4_mm_q8(x, self.packed, self.scales_zeros, self.group,
                                        INT8_OUTLIERS, INT8_OUTLIER_RATIO)
        if x.shape[0] <= self.native_rows():
            return kernels().int4_mm(x, self.packed, self.scales_zeros, self.group)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            x, self.packed, self.group, self.scales_zeros
        )


class Int8Embedding(FastModule):
    """Rows of an int8 table: embed(ids) = q[ids] * scale[ids], in `dtype`.

    `as_linear()` gives the tied output projection over the same storage.
    """

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.linear = Int8Linear(q, scale, None)
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lin = self.linear
        return lin.qweight[ids].to(self.dtype) * lin.scale[ids, None].to(self.dtype)

    def as_linear(self) -> Int8Linear:
        return self.linear
