"""The naive baseline: plain `transformers` generation, one request at a time, in-process.

What a user would write without a serving engine: `model.generate` on each prompt in
turn, greedy, no cache shared between requests. Requests that arrive while another runs
wait their turn, and that wait counts in their time to first token, as it would behind a
server that works this way.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from radixlm.bench.metrics import RequestResult
from radixlm.bench.workload import Part, prompt_ids


class _TimingStreamer:
    """A `transformers` streamer that notes when each generated token comes out."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() puts the prompt first
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def load_hf_model(model: str, dtype: str = "float32") -> Any:
    """A `transformers` causal LM from a HF directory, a .gguf file or a radixlm model name."""
    import torch
    from transformers import AutoModelForCausalLM

    from radixlm.loader import resolve_model_path

    path = Path(model) if Path(model).exists() else resolve_model_path(model)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if path.suffix == ".gguf":
        kwargs["gguf_file"] = path.name
        path = path.parent
    return AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()


class TransformersBackend:
    """Runs each request with `model.generate`, one at a time, on a worker thread."""

    name = "transformers"
    kind = "in-process"

    def __init__(self, model: str, dtype: str = "float32") -> None:
        self.model = load_hf_model(model, dtype)
        self._lock = asyncio.Lock()

    def _generate(self, ids: list[int], output_len: int) -> tuple[list[int], list[float]]:
        import torch

        streamer = _TimingStreamer()
        # Greedy, exactly output_len tokens; eos neither stops nor is masked (ignore_eos).
        gen = copy.deepcopy(self.model.generation_config)
        gen.update(
            do_sample=False,
            max_new_tokens=output_len,
            eos_token_id=None,
            pad_token_id=gen.pad_token_id or 0,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        with torch.inference_mode():
            out = self.model.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                generation_config=gen, streamer=streamer,
            )  # fmt: skip
        return out[0, len(ids) :].tolist(), streamer.times

    async def generate(self, index: int, parts: Sequence[Part], output_len: int) -> RequestResult:
        ids = prompt_ids(parts)
        start = time.perf_counter()  # before the queue: waiting is part of the latency
        async with self._lock:
            out, times = await asyncio.to_thread(self._generate, ids, output_len)
        res = RequestResult(index, len(ids), 0, out, "", start, time.perf_counter())
        res.chunk_times, res.chunk_tokens = times, [1] * len(times)
        return res

    async def warmup(self, ids: Sequence[int]) -> str | None:
        await self.generate(-1, (Part("user", tuple(ids)),), 2)
        return "no prefix cache"

    async def server_counters(self) -> dict[str, int] | None:
        return None

    async def aclose(self) -> None:
        pass
