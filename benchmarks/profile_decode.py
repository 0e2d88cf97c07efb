"""Where the time of one decode step goes, on the real engine path.

    .venv/bin/python benchmarks/profile_decode.py [--model smollm2-135m-instruct] \
        [--dtype auto] [--quantization auto] [--activations auto] [--batch 1,8,32] \
        [--context 1000] [--steps 20] [--shared 0 --groups 4] [--modules]

For each batch size B it builds the engine's runtime (model, KV pool, radix
cache, scheduler), admits B requests of `--context` random prompt tokens,
prefills them (with `--shared S`, in `--groups` groups whose first S tokens
agree, the shape of the shared-prefix workload), then runs `--steps` decode
steps through `Scheduler.step` (scheduler -> model runner -> model -> sampler ->
finisher/detokenizer).

Two passes over the same steps:
1. wall clock, with timers on the stages (step, batch setup, model, attention,
   sampling, detokenization): these are the ms per step reported;
2. `torch.profiler`, whose per-operator times split the model's share into
   weight matmuls, attention (K/V writes, gathers, SDPA) and elementwise ops.
   Where the native layer loop (`models.decode_stack`) runs the layers, its
   attention is the profiler's "native::attention" ranges, scaled the same way.
   The profiler inflates small ops, so pass 2 gives proportions, scaled onto
   the model time of pass 1.
"Python" is the step time no operator accounts for: scheduler bookkeeping,
module calls and tensor set-up. `--modules` runs the layers through the Python
modules instead of the native layer loop, the baseline it is measured against.

It also prints the weight-read bound: the bytes of the weights divided by the
read bandwidth this machine measures for a large tensor, the floor of a
batch-1 decode step that reads every weight once.
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch

from radixlm.attention.paged import PagedContext
from radixlm.config import build_engine_config
from radixlm.engine.setup import build_runtime
from radixlm.executor.model_runner import ModelRunner
from radixlm.models.llama import LlamaForCausalLM
from radixlm.native import kernels
from radixlm.sampling.params import SamplingParams
from radixlm.scheduler.finisher import Finisher
from radixlm.scheduler.request import Req
from radixlm.scheduler.scheduler import Scheduler

MATMUL_OPS = {
    "aten::mm", "aten::addmm", "aten::linear", "aten::matmul",
    "aten::_weight_int8pack_mm", "aten::_weight_int4pack_mm_for_cpu",
    "aten::_weight_int4pack_mm", "aten::mkldnn_linear", "native::int4_mm", "native::int8_mm",
}  # fmt: skip
# radixlm's compiled kernels called from the model, profiled as "native::<name>" ranges
NATIVE_OPS = ("int4_mm", "int8_mm", "rms_norm", "add_rms_norm", "rope_", "silu_mul")
OPS = ("aten::", "native::")

# (label, owner class, method) timed in pass 1; nested labels are subtracted from their parent.
STAGES = [
    ("step", Scheduler, "step"),
    ("model", ModelRunner, "forward"),
    ("setup", PagedContext, "__init__"),
    ("attention", PagedContext, "attend"),
    ("sampling", Scheduler, "_sample"),
    ("detokenize", Finisher, "check"),
]


class StageTimer:
    """Wraps methods to add their wall time into `totals` (seconds) while active."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._saved: list[tuple[type, str, Callable[..., Any]]] = []

    def __enter__(self) -> StageTimer:
        for label, owner, name in STAGES:
            original = getattr(owner, name)
            self._saved.append((owner, name, original))
            setattr(owner, name, self._timed(label, original))
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in self._saved:
            setattr(owner, name, original)

    def _timed(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                self.totals[label] += time.perf_counter() - start

        return wrapper


@contextmanager
def labelled() -> Any:
    """Wrap every stage but the whole step, and each native kernel, in a profiler range
    (pass 2)."""
    native = kernels()
    saved_native = []
    for name in NATIVE_OPS if native is not None else ():
        fn = getattr(native, name, None)
        if fn is None:  # an older build of the kernels
            continue
        saved_native.append((name, fn))

        def call(*a: Any, _f: Callable[..., Any] = fn, _l: str = name) -> Any:
            with torch.profiler.record_function(f"native::{_l}"):
                return _f(*a)

        setattr(native, name, call)
    saved = []
    for label, owner, name in STAGES[1:]:
        original = getattr(owner, name)
        saved.append((owner, name, original))

        def wrapper(*a: Any, _f: Callable[..., Any] = original, _l: str = label, **kw: Any) -> Any:
            with torch.profiler.record_function(f"stage::{_l}"):
                return _f(*a, **kw)

        setattr(owner, name, wrapper)
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
        for name, fn in saved_native:
            setattr(native, name, fn)


def start_batch(args: argparse.Namespace, batch: int) -> Any:
    """A runtime with `batch` requests prefilled and decoding."""
    quant = {"quantization": args.quantization} if args.quantization else {}
    runtime = build_runtime(build_engine_config(
        model=args.model, dtype=args.dtype, activations=args.activations,
        max_total_tokens=batch * (args.context + 64) + batch * 30 * args.steps, **quant,
    ))  # fmt: skip
    sched = runtime.scheduler
    rng = random.Random(batch)
    vocab = runtime.loaded.config.vocab_size
    params = SamplingParams(max_new_tokens=10 * args.steps, ignore_eos=True, temperature=0)
    groups = max(1, min(args.groups, batch)) if args.shared else batch
    shared = [[rng.randrange(vocab) for _ in range(args.shared)] for _ in range(groups)]
    for i in range(batch):
        own = [rng.randrange(vocab) for _ in range(args.context - args.shared)]
        prompt = shared[i % groups] + own if args.shared else own
        sched.add_request(Req(rid=f"r{i}", input_ids=prompt, params=params))
        if i < groups:  # one request per group first, so the rest find its prefix cached
            while len(sched.running) < i + 1:
                sched.step()
    while len(sched.running) < batch:
        sched.step()
    for _ in range(3):  # warm-up decode steps
        sched.step()
    return runtime


def categorise(prof: torch.profiler.profile) -> dict[str, float]:
    """Profiled seconds inside the model (less setup and attention): matmul, elementwise,
    attention (the native layer loop's) and python.

    An operator counts once, at the top level (not inside another operator);
    "python" is the model range's time that no operator accounts for.
    """
    out: dict[str, float] = defaultdict(float)
    for ev in prof.events():
        secs = ev.cpu_time_total / 1e6
        if ev.name in ("stage::model", "stage::setup", "stage::attention"):
            out["wall"] += secs if ev.name == "stage::model" else -secs
            continue
        parent = ev.cpu_parent
        while parent is not None and not parent.name.startswith((*OPS, "stage::")):
            parent = parent.cpu_parent
        if parent is None or parent.name != "stage::model" or not ev.name.startswith(OPS):
            continue  # outside the model, inside another operator, or a stage range itself
        kind = "attention" if ev.name == "native::attention" else "elementwise"
        out["matmul" if ev.name in MATMUL_OPS else kind] += secs
    out["python"] = max(0.0, out["wall"] - out["matmul"] - out["elementwise"] - out["attention"])
    return out


def profile_batch(args: argparse.Namespace, batch: int) -> dict[str, float]:
    """ms per decode step by stage and by operator category for one batch size."""
    runtime = start_batch(args, batch)
    sched = runtime.scheduler
    with StageTimer() as timer:
        for _ in range(args.steps):
            sched.step()
    t = {k: v / args.steps * 1e3 for k, v in timer.totals.items()}
    with labelled(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
        for _ in range(args.steps):
            sched.step()
    cats = categorise(p)
    # The model's wall time less batch setup and attention, split by pass 2's proportions.
    inner = t["model"] - t["setup"] - t.get("attention", 0.0)
    parts = ("matmul", "elementwise", "python", "attention")
    share = {k: inner * cats[k] / cats["wall"] for k in parts}
    share["attention"] += t.get("attention", 0.0)  # the modules' attention, timed in pass 1
    row = {"step": t["step"], "setup": t["setup"], **share}
    row["sampling"], row["detokenize"] = t.get("sampling", 0.0), t.get("detokenize", 0.0)
    row["scheduler"] = t["step"] - t["model"] - row["sampling"] - row["detokenize"]
    row["weight_mib"] = runtime.loaded.memory_bytes / 2**20
    return row


def read_bandwidth() -> float:
    """Bytes per second of one pass over a 1 GiB float32 tensor (best of 5)."""
    x = torch.ones(2**28)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--quantization", default=None, help="default: the engine's")
    ap.add_argument("--activations", default="auto", help="of int4 layers: auto, bfloat16, int8")
    ap.add_argument("--batch", default="1,8,32")
    ap.add_argument("--context", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--shared", type=int, default=0,
                    help="the first SHARED tokens of each prompt are its group's (cascade)")
    ap.add_argument("--groups", type=int, default=4, help="groups of prompts with --shared")
    ap.add_argument("--modules", action="store_true",
                    help="the layers through the modules, not the native layer loop")
    args = ap.parse_args()
    if args.modules:
        LlamaForCausalLM._decode_stack = lambda *a: None  # type: ignore[method-assign]
    bw = read_bandwidth()
    rows = {int(b): profile_batch(args, int(b)) for b in args.batch.split(",")}
    weight_bytes = next(iter(rows.values()))["weight_mib"] * 2**20
    bound_ms = weight_bytes / bw * 1e3
    print(f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; model {args.model}, dtype {args.dtype}, "
          f"quantization {args.quantization}, activations {args.activations}; "
          f"context {args.context} tokens; "
          f"layers through {'the modules' if args.modules else 'the native loop'}; "
          f"{args.steps} steps per batch.")  # fmt: skip
    print(f"\nWeights {weight_bytes / 2**20:.1f} MiB; read bandwidth {bw / 1e9:.1f} GB/s; "
          f"weight-read bound {bound_ms:.2f} ms per step.\n")
    cols = ["step", "matmul", "attention", "elementwise", "python", "setup",
            "sampling", "detokenize", "scheduler"]  # fmt: skip
    print("| batch | " + " | ".join(f"{c} ms" for c in cols) + " | tok/s | step / bound |")
    print("|---:|" + "---:|" * (len(cols) + 2))
    for b, r in rows.items():
        cells = " | ".join(f"{r[c]:.2f}" for c in cols)
        print(f"| {b} | {cells} | {b * 1e3 / r['step']:.0f} | {r['step'] / bound_ms:.1f}x |")


if __name__ == "__main__":
    main()
