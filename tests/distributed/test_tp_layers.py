"""Sharded layers against the unsharded model: two gloo ranks on 127.0.0.1.

Each rank loads only its slices of a tiny random checkpoint (Llama, Qwen2 with
its qkv bias and tied head, Mistral; KV heads split at --tp 2 and replicated at
--tp 4), runs one dense forward, and the gathered logits must match the
single-process model's within 1e-4.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from radixlm.attention.dense import DenseContext, DenseKVCache
from radixlm.config import LoadConfig
from radixlm.distributed import init_tp_group
from radixlm.distributed.plan import exit_now, leave_group
from radixlm.loader import load_model
from tests.helpers.reference import tokens
from tests.helpers.tiny_models import write_tiny_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _logits(loaded, ids: list[int]) -> torch.Tensor:
    cache = DenseKVCache(loaded.config, len(ids), loaded.dtype, loaded.device)
    ctx = DenseContext([cache], [len(ids)])
    return loaded.model(torch.tensor(ids), torch.arange(len(ids)), ctx)


def _rank(rank: int, size: int, port: int, model: str, ids: list[int], out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    tp = init_tp_group(rank, size, f"tcp://127.0.0.1:{port}")
    load = LoadConfig(model=model, dtype="float32", device="cpu", quantization="none")
    loaded = load_model(load, progress=False, tp=tp)
    logits = _logits(loaded, ids)
    torch.save({"logits": logits, "kv_heads": loaded.config.num_kv_heads,
                "heads": loaded.config.num_heads}, f"{out}.{rank}")  # fmt: skip
    leave_group()
    exit_now(0)


@pytest.mark.parametrize(
    ("variant", "size", "kv_heads"),
    [("llama", 2, 1), ("qwen2", 2, 1), ("mistral", 2, 1), ("llama", 4, 1)],
)
def test_sharded_logits_match_unsharded(tmp_path: Path, variant: str, size: int, kv_heads: int):
    torch.set_num_threads(1)
    model = str(write_tiny_model(tmp_path / variant, variant))
    full = load_model(LoadConfig(model=model, dtype="float32", device="cpu",
                                 quantization="none"), progress=False)  # fmt: skip
    ids = tokens(12, seed=3, vocab=full.config.vocab_size)
    expected = _logits(full, ids)
    out = str(tmp_path / "logits")
    mp.start_processes(_rank, args=(size, _free_port(), model, ids, out), nprocs=size,
                       start_method="spawn")  # fmt: skip
    for rank in range(size):
        got = torch.load(f"{out}.{rank}")
        assert got["heads"] == full.config.num_heads // size
        assert got["kv_heads"] == kv_heads  # 2 KV heads: split at 2 ranks, replicated at 4
        assert got["logits"].shape == expected.shape
        torch.testing.assert_close(got["logits"], expected, atol=1e-4, rtol=0)


def test_unsplittable_models_are_refused(tmp_path: Path):
    from radixlm.distributed.group import TPGroup
    from radixlm.loader import read_model_config
    from radixlm.models.parallel import local_config

    config = read_model_config(write_tiny_model(tmp_path / "m", "llama"))
    with pytest.raises(ValueError, match="must divide num_heads"):
        local_config(config, TPGroup(rank=0, size=3))
    model = str(tmp_path / "m")
    with pytest.raises(ValueError, match="float32"):
        load_model(LoadConfig(model=model, dtype="bfloat16", device="cpu", quantization="none"),
                   progress=False, tp=TPGroup(rank=0, size=2))  # fmt: skip
