"""GGUF files (llama.cpp's single-file format): model metadata and dequantized weights.

A GGUF file holds key/value metadata (`llama.block_count`, ...) and tensors
under llama.cpp's names (`blk.0.attn_q.weight`, ...), each stored as float
(F32/F16/BF16) or as quantized blocks (Q8_0, Q4_K, ...). This module turns
the metadata into a `ModelConfig` and yields every tensor dequantized to
float32 under its Hugging Face name, in Hugging Face layout, so the model's
`load_weights` treats it like a safetensors checkpoint.

Layout conventions:
- GGUF lists a tensor's dimensions innermost first (`[in_features, out_features]`
  for a linear weight); `GGUFReader` exposes the data in numpy order, so after
  dequantization a weight is `[out_features, in_features]` as in HF.
- llama.cpp's converter reorders the rows of q_proj/k_proj (weights and
  biases) for the "llama" architecture, so that each head's rotary pairs are
  interleaved (GPT-J style) rather than split in halves (HF "rotate half").
  We undo that here. Qwen2 files are written without that reordering.
- Mistral and SmolLM2 checkpoints are converted under the "llama" architecture.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, ReaderTensor
from gguf.quants import dequantize
from tqdm import tqdm

from radixlm.config import ModelConfig, RopeScaling
from radixlm.loader.gguf_families import (
    BLOCK_NAMES,
    GGUF_ARCHITECTURES,
    NORM_OFFSET,
    SKIPPED,
    family_fields,
    longrope_scaling,
    unpermute_rotary_rows,
)
from radixlm.loader.gguf_rope import f32_short as _f32
from radixlm.loader.gguf_rope import rope_scaling_from_freq_factors

# Architectures whose q/k rows llama.cpp's converter permuted.
_PERMUTED_ARCHITECTURES = frozenset({"llama"})
# Tensors outside the blocks.
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_GLOBAL_RE = re.compile(r"(\w+)\.(weight|bias)")

# Plain (unblocked) numeric storage types: numpy can convert them directly.
_PLAIN_TYPES = {
    GGMLQuantizationType.F64,
    GGMLQuantizationType.I8,
    GGMLQuantizationType.I16,
    GGMLQuantizationType.I32,
    GGMLQuantizationType.I64,
}

# Llama 3's usual rope scaling band; tried first when fitting `rope_freqs.weight`.


# The reader of the last file whose config was read, kept for reading its weights:
# (resolved path, mtime, size) -> reader.
_READERS: dict[tuple[str, int, int], GGUFReader] = {}


def _open_reader(path: Path) -> GGUFReader:
    """A GGUFReader for `path`, shared by `read_gguf_config` and `iter_gguf_weights`.

    Parsing the metadata takes seconds for a large vocabulary (the reader
    builds numpy views for every token string), so the reader opened for the
    config is reused for the weights; `iter_gguf_weights` drops it when done.
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    reader = _READERS.get(key)
    if reader is None:
        _READERS.clear()
        reader = _READERS[key] = GGUFReader(path)
    return reader


# ---------------------------------------------------------------------------
# Metadata -> ModelConfig


class _Metadata:
    """Typed access to a GGUF file's key/value metadata, with `{arch}` keys filled in."""

    def __init__(self, reader: GGUFReader, path: Path) -> None:
        self.reader = reader
        self.path = path
        arch = reader.get_field("general.architecture")
        self.gguf_arch = str(arch.contents()) if arch is not None else ""

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key` (`{arch}` replaced by the file's architecture), or `default`."""
        field = self.reader.get_field(key.format(arch=self.gguf_arch))
        if field is None or not field.types:
            return default
        return field.contents()

    def require(self, key: str) -> Any:
        """The value of `key`; raises ValueError naming the file when it is absent."""
        value = self.get(key)
        if value is None:
            full_key = key.format(arch=self.gguf_arch)
            raise ValueError(f"{self.path.name}: GGUF metadata lacks {full_key!r}")
        return value

    def count(self, key: str) -> int | None:
        """The number of elements of the array `key`, without decoding them; None if absent."""
        field = self.reader.get_field(key)
        return None if field is None else len(field.data)

    def tensor(self, name: str) -> ReaderTensor | None:
        """The tensor called `name`, or None."""
        return next((t for t in self.reader.tensors if t.name == name), None)


def read_gguf_config(path: Path) -> ModelConfig:
    """Read a GGUF file's architecture metadata; return the equivalent ModelConfig."""
    meta = _Metadata(_open_reader(path), path)
    arch = gguf_architecture(meta)
    hidden = int(meta.require("{arch}.embedding_length"))
    num_heads = int(meta.require("{arch}.attention.head_count"))
    head_dim = _head_dim(meta, hidden, num_heads)
    rope_theta = _f32(meta.get("{arch}.rope.freq_base", 10000.0))
    layers = int(meta.require("{arch}.block_count"))
    base = dict(
        vocab_size=_vocab_size(meta),
        hidden_size=hidden,
        intermediate_size=int(meta.require("{arch}.feed_forward_length")),
        num_layers=layers,
        num_heads=num_heads,
        num_kv_heads=int(meta.get("{arch}.attention.head_count_kv", num_heads)),
        head_dim=head_dim,
        rms_norm_eps=_f32(meta.get("{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=rope_theta,
        rope_scaling=_rope_scaling(meta, head_dim, rope_theta),
        max_position_embeddings=int(meta.get("{arch}.context_length", 4096)),
        tie_word_embeddings=meta.tensor("output.weight") is None,
        attention_bias=meta.tensor("blk.0.attn_q.bias") is not None,
        bos_token_id=_optional_int(meta.get("tokenizer.ggml.bos_token_id")),
        eos_token_ids=_eos_token_ids(meta),
        name=str(meta.get("general.name") or path.stem),
    )
    extra = family_fields(meta, arch, hidden, num_heads, head_dim, layers)
    long, short = meta.tensor("rope_factors_long.weight"), meta.tensor("rope_factors_short.weight")
    if arch == "phi3" and long is not None and short is not None:
        extra["rope_scaling"] = longrope_scaling(
            meta, dequantize_tensor(long).tolist(), dequantize_tensor(short).tolist(),
            int(base["max_position_embeddings"]),
        )  # fmt: skip
    return ModelConfig(architecture=arch, **{**base, **extra})


def gguf_architecture(meta: _Metadata) -> str:
    """Our architecture for the file; ValueError listing the supported ones if none."""
    arch = GGUF_ARCHITECTURES.get(meta.gguf_arch)
    if arch is None:
        supported = ", ".join(sorted(GGUF_ARCHITECTURES))
        raise ValueError(
            f"{meta.path.name}: unsupported GGUF architecture {meta.gguf_arch!r} "
            f"(supported: {supported}; llama with experts is read as Mixtral)"
        )
    if arch == "llama" and int(meta.get("{arch}.expert_count", 0) or 0) > 0:
        return "mixtral"
    return arch


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _head_dim(meta: _Metadata, hidden: int, num_heads: int) -> int:
    """Per-head size: `attention.key_length`, else `rope.dimension_count`, else hidden // heads."""
    key_length = meta.get("{arch}.attention.key_length")
    value_length = meta.get("{arch}.attention.value_length", key_length)
    rope_dims = meta.get("{arch}.rope.dimension_count")
    head_dim = int(key_length or rope_dims or hidden // num_heads)
    if value_length is not None and int(value_length) != head_dim:
        raise ValueError(f"{meta.path.name}: key and value head sizes differ; not supported")
    if rope_dims is not None and int(rope_dims) != head_dim:
        raise ValueError(
            f"{meta.path.name}: rotary embedding covers {rope_dims} of {head_dim} head dims; "
            "partial rotary embeddings are not supported"
        )
    return head_dim


def _vocab_size(meta: _Metadata) -> int:
    """`{arch}.vocab_size`, else the embedding's row count, else the tokenizer's token count."""
    size = meta.get("{arch}.vocab_size")
    if size is not None:
        return int(size)
    embed = meta.tensor("token_embd.weight")
    if embed is not None:
        return int(embed.shape[-1])  # GGUF dims: [hidden, vocab]
    count = meta.count("tokenizer.ggml.tokens")
    if count is None:
        raise ValueError(f"{meta.path.name}: cannot tell the vocabulary size")
    return count


def _eos_token_ids(meta: _Metadata) -> tuple[int, ...]:
    """End-of-sequence, end-of-turn and end-of-message ids, deduplicated, in that order."""
    ids: list[int] = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        value = meta.get(f"tokenizer.ggml.{key}")
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    return tuple(ids)


def _rope_scaling(meta: _Metadata, head_dim: int, theta: float) -> RopeScaling | None:
    """Rope scaling from `rope.scaling.*` (linear) or a `rope_freqs.weight` tensor (llama3)."""
    kind = meta.get("{arch}.rope.scaling.type")
    factor = meta.get("{arch}.rope.scaling.factor")
    if kind is None and meta.get("{arch}.rope.scale_linear") is not None:  # older files
        kind, factor = "linear", meta.get("{arch}.rope.scale_linear")
    freqs = meta.tensor("rope_freqs.weight")
    if kind not in (None, "none", "linear"):
        raise ValueError(
            f"{meta.path.name}: rope scaling type {kind!r} is not supported (supported: linear)"
        )
    if kind == "linear" and factor is not None and float(factor) != 1.0:
        if freqs is not None:
            raise ValueError(f"{meta.path.name}: both linear rope scaling and rope_freqs.weight")
        return RopeScaling(kind="linear", factor=_f32(factor))
    if freqs is None:
        return None
    factors = dequantize_tensor(freqs).double().numpy()  # [head_dim // 2]
    if factors.shape != (head_dim // 2,):
        raise ValueError(
            f"{meta.path.name}: rope_freqs.weight has shape {factors.shape}, "
            f"expected ({head_dim // 2},)"
        )
    original = meta.get("{arch}.rope.scaling.original_context_length")
    try:
        return rope_scaling_from_freq_factors(factors, head_dim, theta, original)
    except ValueError as e:
        raise ValueError(f"{meta.path.name}: {e}") from None


# ---------------------------------------------------------------------------
# Tensors


def gguf_to_hf_name(name: str, arch: str = "llama") -> str | None:
    """The HF name of GGUF tensor `name` in a file of our architecture `arch`; None for
    tensors that hold no model weight. Stacked experts keep an `{e}` to fill in.

    Raises ValueError for a name this decoder has no place for.
    """
    if name in SKIPPED:
        return None
    blocks = BLOCK_NAMES[arch]
    if m := _BLOCK_RE.fullmatch(name):
        layer, part, kind = m.groups()
        if part in blocks:
            return f"model.layers.{layer}.{blocks[part]}.{kind}"
    elif (m := _GLOBAL_RE.fullmatch(name)) and m.group(1) in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[m.group(1)]}.{m.group(2)}"
    raise ValueError(f"unexpected GGUF tensor {name!r} for a {arch} decoder")


def dequantize_tensor(tensor: ReaderTensor) -> torch.Tensor:
    """A GGUF tensor as a new float32 torch tensor in numpy/HF dimension order.

    GGUF dims are innermost first, so a tensor listed as `[in, out]` comes
    back as `[out, in]`. Every storage type `gguf.quants` can dequantize works.
    """
    qtype = tensor.tensor_type
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    if qtype in _PLAIN_TYPES:
        values = tensor.data.astype(np.float32)
    else:
        try:
            values = dequantize(tensor.data, qtype)
        except NotImplementedError:
            raise ValueError(
                f"GGUF tensor {tensor.name!r} is stored as {qtype.name}, "
                "which the installed gguf package cannot dequantize"
            ) from None
    values = np.require(values.reshape(shape), dtype=np.float32, requirements=["C", "W"])
    return torch.from_numpy(values)


def projection_types(path: Path) -> dict[str, int]:
    """How many of a GGUF file's block projection weights use each storage type (by name)."""
    counts: dict[str, int] = {}
    for tensor in _open_reader(path).tensors:
        m = _BLOCK_RE.fullmatch(tensor.name)
        if m and m.group(3) == "weight" and m.group(2) in BLOCK_NAMES["llama"] and (
            "norm" not in m.group(2)
        ):
            name = tensor.tensor_type.name
            counts[name] = counts.get(name, 0) + 1
    return counts


def iter_gguf_weights(
    path: Path, config: ModelConfig, progress: bool = True
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (canonical HF name, float32 tensor in HF layout) for every weight in a GGUF file.

    Quantized tensors are dequantized one at a time; q/k rows are restored to
    HF order where the converter reordered them, Gemma's norms to their HF
    values, stacked experts split one per expert, Phi-3's fused tensors split.
    Shows a progress bar over tensors unless `progress` is False.
    """
    from radixlm.loader.names import canonical_weights

    yield from canonical_weights(config, _gguf_tensors(path, config, progress))


def _gguf_tensors(
    path: Path, config: ModelConfig, progress: bool
) -> Iterator[tuple[str, torch.Tensor]]:
    reader = _open_reader(path)
    permuted = _Metadata(reader, path).gguf_arch in _PERMUTED_ARCHITECTURES
    offset = NORM_OFFSET.get(config.architecture, 0.0)
    desc = f"Loading {path.name}"
    try:
        for tensor in tqdm(reader.tensors, desc=desc, disable=not progress, leave=False):
            hf_name = gguf_to_hf_name(tensor.name, config.architecture)
            if hf_name is None:
                continue
            weight = dequantize_tensor(tensor)  # float32, HF layout
            if permuted and ".self_attn.q_proj." in hf_name:
                weight = unpermute_rotary_rows(weight, config.num_heads)
            elif permuted and ".self_attn.k_proj." in hf_name:
                weight = unpermute_rotary_rows(weight, config.num_kv_heads)
            if offset and hf_name.endswith("norm.weight"):
                weight = weight - offset
            if "{e}" in hf_name:  # [E, out, in] stacked experts
                for e in range(weight.shape[0]):
                    yield hf_name.format(e=e), weight[e]
            else:
                yield hf_name, weight
    finally:
        _READERS.clear()
