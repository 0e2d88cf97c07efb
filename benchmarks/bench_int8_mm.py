"""The int8 output head's matmul: radixlm's `int8_mm` against torch's `_weight_int8pack_mm`.

SmolLM2-135M's tied head (49152 x 576 int8, one bfloat16 scale per row) in huge
pages as the engine keeps it, for 1 to 128 rows of bfloat16 x (a decode batch has
one row per sequence). Past 8 rows `int8_mm` widens blocks of the weight to bfloat16
in cache and tiles with vdpbf16ps; the "dequantize" column is the dense path a layer
takes where the kernel is not built (the whole weight to bfloat16, then `F.linear`).
Prints the median ms of 50 calls each (10 past 8 rows; interleaved rounds) and the
largest relative difference between torch's output and radixlm's.

Run: .venv/bin/python benchmarks/bench_int8_mm.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timing import interleaved

from radixlm import threads  # noqa: F401  (the engine's OpenMP settings)
from radixlm.hugepages import pack_buffers
from radixlm.models.quant import Int8Linear, quantize_int8
from radixlm.native import kernels


def main() -> None:
    native = kernels()
    assert native is not None and native.int8_mm_supported(), "int8_mm is not built here"
    gen = torch.Generator().manual_seed(0)
    head = Int8Linear(*quantize_int8(torch.randn(49152, 576, generator=gen)), None)
    pack_buffers([head])
    q, scale = head.qweight, head.scale
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per call (median)")
    print("| rows | torch | dequantize | radixlm | torch / radixlm | max rel diff |")
    print("|---:|---:|---:|---:|---:|---:|")
    for m in (1, 2, 4, 8, 16, 32, 64, 128):
        x = torch.randn(m, 576, generator=gen).bfloat16()
        runs = {"torch": lambda x=x: torch.ops.aten._weight_int8pack_mm(x, q, scale),
                "dequantize": lambda x=x: F.linear(x, head.dequantize()),
                "radixlm": lambda x=x: native.int8_mm(x, q, scale)}  # fmt: skip
        ms = {k: v * 1e3 for k, v in interleaved(runs, 50 if m <= 8 else 10).items()}
        a, b = (runs[k]().float() for k in ("torch", "radixlm"))
        diff = ((a - b).abs().max() / a.abs().max()).item()
        print(f"| {m} | {ms['torch']:.3f} | {ms['dequantize']:.3f} | {ms['radixlm']:.3f} | "
              f"{ms['torch'] / ms['radixlm']:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
