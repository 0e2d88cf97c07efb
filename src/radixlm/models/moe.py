"""Mixture-of-experts MLP: a top-k router, experts run grouped by expert, an optional shared expert.

Per forward of T tokens: the router picks k experts per token; the T*k
(token, expert) pairs are sorted by expert, so each expert's tokens form one
contiguous block of rows; each expert runs one gate/up matmul and one down
matmul on its block; the rows, scaled by their routing weights, are summed
back into their tokens. The Python work is one step per expert, whatever T.

`ExpertGroup` keeps the experts dense; `QuantizedExperts` (built by
`loader.quantize`) holds one weight-only int8/int4 linear pair per expert.

Expert placement: `ExpertGroup` holds experts [first, first + count) of the
layer. On one rank that is all of them. Placing experts on ranks means each
rank builds the group of its own slice, runs only the pairs routed to it
(the others are skipped by `ExpertGroup.forward`), and the per-rank outputs
are summed (an all-reduce) where `MoEBlock.forward` adds them up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from radixlm.config import MoEConfig
from radixlm.models.fast_module import FastModule
from radixlm.models.ops import silu_mul


class Router(FastModule):
    """Router logits -> (weights [T, k], expert ids [T, k]) as transformers computes them:
    softmax in float32 over all experts, top-k, renormalised when `norm_topk_prob`."""

    def __init__(self, hidden: int, moe: MoEConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(moe.num_experts, hidden))
        self.top_k, self.norm_topk_prob = moe.top_k, moe.norm_topk_prob

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = F.linear(x, self.weight)  # [T, E]
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        weights, ids = torch.topk(probs, self.top_k, dim=-1)  # [T, k] each
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights.to(x.dtype), ids


class _Experts(FastModule):
    """Experts [first, first + count) of one layer: routing pairs in, weighted sums out."""

    first: int
    count: int

    def run(self, e: int, rows: torch.Tensor) -> torch.Tensor:
        """Expert e (local index) on rows [n, H]; returns [n, H]."""
        raise NotImplementedError

    def skip_empty(self, pairs: int) -> bool:
        """Whether experts without pairs are skipped for a call with `pairs` pairs."""
        return True

    def forward(
        self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor
    ) -> torch.Tensor:
        """Sum over each token's routed experts in this group of weight * expert(x); [T, H].

        x: [T, H]; weights, ids: [T, k]. Pairs routed to experts outside the group add
        nothing. The pairs are sorted by expert and each expert runs once on its block
        of rows (one host read: the per-expert row counts); no Python work per token.
        """
        k = ids.shape[1]
        skip = self.skip_empty(ids.numel())
        local = ids.reshape(-1) - self.first  # [T*k]
        mine = (local >= 0) & (local < self.count)
        local = torch.where(mine, local, self.count)  # foreign pairs sort last, dropped
        order = torch.argsort(local, stable=True)  # pairs grouped by expert
        counts = torch.bincount(local, minlength=self.count + 1)[: self.count].tolist()
        n = sum(counts)
        order = order[:n]
        token = order // k  # [n] the token of each sorted pair
        rows = x.index_select(0, token)  # [n, H]
        out_rows = torch.empty_like(rows)
        start = 0
        for e, c in enumerate(counts):  # one step per expert, not per token
            if c or not skip:
                out_rows[start : start + c] = self.run(e, rows[start : start + c])
            start += c
        scale = weights.reshape(-1).index_select(0, order).unsqueeze(1)  # [n, 1]
        out = torch.zeros_like(x)
        return out.index_add_(0, token, out_rows * scale)


class ExpertGroup(_Experts):
    """Dense experts as stacked weights: w13 [count, 2I, H] (gate rows then up rows, as
    the fused dense MLP) and w2 [count, H, I]."""

    def __init__(self, hidden: int, moe: MoEConfig, first: int = 0, count: int | None = None):
        super().__init__()
        self.first = first
        self.count = moe.num_experts - first if count is None else count
        inter = moe.intermediate_size
        self.w13 = nn.Parameter(torch.empty(self.count, 2 * inter, hidden))
        self.w2 = nn.Parameter(torch.empty(self.count, hidden, inter))

    def run(self, e: int, rows: torch.Tensor) -> torch.Tensor:
        return F.linear(silu_mul(F.linear(rows, self.w13[e])), self.w2[e])

    def skip_empty(self, pairs: int) -> bool:
        """Few pairs (decode): only the experts hit run, reading their weights in place.
        More pairs: every expert runs, empty ones too, so the work is a fixed set of ops."""
        return pairs <= self.count


class QuantizedExperts(_Experts):
    """Experts as weight-only quantized linears (`models.quant`), one gate/up and one down
    per expert; experts without pairs are skipped (the kernels take no empty input)."""

    def __init__(self, w13: list[nn.Module], w2: list[nn.Module], first: int = 0) -> None:
        super().__init__()
        self.first, self.count = first, len(w13)
        self.w13, self.w2 = nn.ModuleList(w13), nn.ModuleList(w2)

    def run(self, e: int, rows: torch.Tensor) -> torch.Tensor:
        return self.w2[e](silu_mul(self.w13[e](rows)))


class SharedExpert(FastModule):
    """A dense SwiGLU MLP every token runs, scaled by sigmoid(gate(x)) (Qwen2-MoE)."""

    def __init__(self, hidden: int, inter: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden, 2 * inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_mul(self.gate_up_proj(x)))


class MoEBlock(FastModule):
    """The MLP of a mixture-of-experts layer; forward(x [T, H]) -> [T, H] in x's dtype."""

    def __init__(self, hidden: int, moe: MoEConfig) -> None:
        super().__init__()
        self.gate = Router(hidden, moe)
        self.experts: _Experts = ExpertGroup(hidden, moe)
        self.shared_expert: SharedExpert | None = None
        self.shared_expert_gate: nn.Linear | None = None
        if moe.shared_intermediate_size:
            self.shared_expert = SharedExpert(hidden, moe.shared_intermediate_size)
            self.shared_expert_gate = nn.Linear(hidden, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = self.gate(x)
        out = self.experts(x, weights, ids)  # with experts on ranks: all-reduce here
        if self.shared_expert is not None and self.shared_expert_gate is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out

    def expert_bytes(self) -> tuple[int, int]:
        """(bytes of the routed experts' weights, bytes one token's k experts use)."""
        tensors = [*self.experts.parameters(), *self.experts.buffers()]
        total = sum(t.numel() * t.element_size() for t in tensors)
        return total, total * self.gate.top_k // max(1, self.experts.count)
