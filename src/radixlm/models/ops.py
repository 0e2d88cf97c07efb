"""The decoder's elementwise ops: one fused native call each on the CPU, plain torch elsewhere.

Each function computes in float32 and returns the input's dtype. The torch
forms are the reference; the native ones (`radixlm.native`) read and write each
tensor once and round once, so in bfloat16 they may differ from the torch
forms in the last bit. Inputs are contiguous [T, ...] tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from radixlm.native import kernels

Rope = tuple[torch.Tensor, torch.Tensor]  # (cos, signed sin), each [T, 1, D]


def _native(x: torch.Tensor):
    """The kernel module when it applies to `x` (contiguous, CPU, float32 or bfloat16)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return None
    return kernels() if x.is_contiguous() else None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * (x / rms(x)), x [T, H]; the normalised value is rounded to x's dtype first."""
    native = _native(x)
    if native is not None:
        return native.rms_norm(x, weight, eps)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """x += delta in place (the residual stream), then return rms_norm(x)."""
    native = _native(x)
    if native is not None:
        return native.add_rms_norm(x, delta, weight, eps)
    x.add_(delta)
    return rms_norm(x, weight, eps)


def rope_tables(cos: torch.Tensor, sin: torch.Tensor, like: torch.Tensor) -> Rope:
    """(cos, signed sin) for `apply_rope_` on tensors like `like`, made once per forward:
    for the native kernel, which computes in float32, the same values (already rounded to
    the model dtype) as float32, so no layer converts them again; otherwise as given."""
    if _native(like) is None or cos.dtype == torch.float32:
        return cos, sin
    return cos.float(), sin.float()


def apply_rope_(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> None:
    """Rotate the first `heads` heads of qkv [T, heads_total, D] in place.

    cos and signed sin are [T, 1, D] (HF's rotate-half layout): rotate_half(x) * sin
    == roll(x, D/2) * sin_signed, where sin_signed has its first half negated.
    """
    native = _native(qkv)
    if native is not None:
        native.rope_(qkv, cos, sin, heads)
        return
    x = qkv[:, :heads]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # exact for `rope_tables`' float32 copies
    x.copy_(x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * sin)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up [T, 2I] = [gate | up]; returns [T, I]."""
    native = _native(gate_up)
    if native is not None:
        return native.silu_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


REFINED_CANDIDATES = 8  # logits recomputed in float32 per row: the top of a low-precision head


def refine_top_logits(
    logits: torch.Tensor,
    hidden: torch.Tensor,
    head_rows: Callable[[torch.Tensor], torch.Tensor],
    k: int = REFINED_CANDIDATES,
) -> torch.Tensor:
    """Recompute the top-k logits of each row in float32; returns `logits` (changed in place).

    logits: [N, V] float32 from a bfloat16 (or quantized) output projection, whose
    rounding to bf16 leaves the top candidates tied or misordered (bf16 keeps 8 bits of
    mantissa: a step of 0.125 at logit 20). hidden: [N, H] its input;
    head_rows(idx [N, k]) -> [N, k, H] float32 rows of the projection's weight.
    Greedy choice and the top of the distribution then follow the exact dot products.
    """
    idx = logits.topk(k, dim=-1).indices  # [N, k]
    exact = torch.einsum("nh,nkh->nk", hidden.float(), head_rows(idx))
    return logits.scatter_(1, idx, exact)
