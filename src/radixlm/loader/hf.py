"""Hugging Face model directories: config.json, generation_config.json, *.safetensors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from radixlm.config import ModelConfig


def read_hf_config(model_dir: Path) -> ModelConfig:
    """Read `config.json` (and `generation_config.json` when present) into a ModelConfig."""
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json")
    cfg = json.loads(cfg_path.read_text())
    gen_path = model_dir / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else None
    cfg.setdefault("_name_or_path", model_dir.name)
    return ModelConfig.from_hf(cfg, gen)


def safetensors_files(model_dir: Path) -> list[Path]:
    """The checkpoint's shard files: those named by the index, else every *.safetensors."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir} has no *.safetensors files")
    return files


def iter_hf_weights(model_dir: Path, progress: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF tensor name, tensor) for every tensor of every shard, with a progress bar."""
    files = safetensors_files(model_dir)
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
            desc = f"Loading {path.name}"
            for name in tqdm(names, desc=desc, disable=not progress, leave=False):
                yield name, f.get_tensor(name)
