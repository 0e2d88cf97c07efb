"""GGUF loading against safetensors: the same tiny random model written both ways.

Each test writes a tiny random HF checkpoint, converts it to GGUF the way
llama.cpp's converter lays files out (its tensor names, its q/k row order for
the "llama" architecture, no `output.weight` when embeddings are tied), loads
both files with `load_model`, and compares the logits of one forward.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize
from helpers.tiny_models import BASE, VARIANTS, write_tiny_model
from safetensors.torch import load_file

from radixlm.attention.dense import DenseContext, DenseKVCache
from radixlm.config import LoadConfig, ModelConfig
from radixlm.loader import LoadedModel, load_model
from radixlm.loader.gguf import read_gguf_config
from radixlm.loader.hf import read_hf_config

Q = GGMLQuantizationType
TOKENS = [1, 17, 250, 3, 99, 42, 42, 7, 383, 0, 128, 64, 5, 301, 2, 77]

# HF module name inside a layer -> llama.cpp's tensor name inside `blk.N`.
_LAYER_TO_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
_GLOBAL_TO_GGUF = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
}

# An encoder turns a float32 array [rows, cols] into (stored array, storage type).
Encoder = Callable[[str, np.ndarray], tuple[np.ndarray, GGMLQuantizationType]]


def gguf_name(hf_name: str) -> str:
    """llama.cpp's name for the HF tensor `hf_name`."""
    module, kind = hf_name.rsplit(".", 1)
    if module in _GLOBAL_TO_GGUF:
        return f"{_GLOBAL_TO_GGUF[module]}.{kind}"
    _, _, layer, rest = module.split(".", 3)  # model.layers.<N>.<rest>
    return f"blk.{layer}.{_LAYER_TO_GGUF[rest]}.{kind}"


def rotary_row_order(rows: int, n_head: int) -> np.ndarray:
    """Row indices [rows] in llama.cpp's q/k order: stored row i is HF row order[i]."""
    # Per head, HF rows are [first half | second half]; llama.cpp pairs row j with j + half.
    head_dim = rows // n_head
    idx = np.arange(rows).reshape(n_head, 2, head_dim // 2)
    return idx.transpose(0, 2, 1).reshape(rows)


def as_float32(name: str, array: np.ndarray) -> tuple[np.ndarray, GGMLQuantizationType]:
    """Store tensor `name` as F32."""
    return np.ascontiguousarray(array, dtype=np.float32), Q.F32


def hf_rope_factors(hf_dir: Path, cfg: dict) -> np.ndarray | None:
    """llama3 rotary divisors [head_dim // 2] (as llama.cpp stores them), via transformers."""
    scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    if scaling.get("rope_type") != "llama3":
        return None
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = AutoConfig.from_pretrained(hf_dir)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    theta = scaling.get("rope_theta", cfg.get("rope_theta"))
    base = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    return (base / scaled.double().numpy()).astype(np.float32)


def write_metadata(writer: GGUFWriter, cfg: dict, name: str, with_vocab_size: bool) -> None:
    """Add the architecture and tokenizer keys llama.cpp's converter writes."""
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    scaling = cfg.get("rope_parameters") or {}
    writer.add_name(name)
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_freq_base(scaling.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    writer.add_rope_dimension_count(head_dim)
    if with_vocab_size:
        writer.add_vocab_size(cfg["vocab_size"])
    writer.add_token_list([f"<t{i}>" for i in range(cfg["vocab_size"])])
    writer.add_bos_token_id(cfg["bos_token_id"])
    writer.add_eos_token_id(cfg["eos_token_id"])


def write_gguf(
    hf_dir: Path, out: Path, encode: Encoder = as_float32, with_vocab_size: bool = True
) -> dict[str, torch.Tensor]:
    """Convert the checkpoint in `hf_dir` to the GGUF file `out`.

    Every 2-D tensor is stored through `encode`; 1-D tensors stay F32.
    Returns the HF state dict as a reader of `out` should see it: each tensor
    is what its stored bytes dequantize to, back in HF row order.
    """
    cfg = json.loads((hf_dir / "config.json").read_text())
    state = load_file(hf_dir / "model.safetensors")
    arch = "qwen2" if cfg["model_type"] == "qwen2" else "llama"
    writer = GGUFWriter(out, arch)
    write_metadata(writer, cfg, name=hf_dir.name, with_vocab_size=with_vocab_size)
    factors = hf_rope_factors(hf_dir, cfg)
    if factors is not None:
        writer.add_tensor("rope_freqs.weight", factors)
    seen: dict[str, torch.Tensor] = {}
    for hf_name, tensor in state.items():
        w = tensor.float().numpy()  # HF layout, e.g. [out_features, in_features]
        order = None
        if arch == "llama" and ".q_proj." in hf_name:
            order = rotary_row_order(w.shape[0], cfg["num_attention_heads"])
        elif arch == "llama" and ".k_proj." in hf_name:
            order = rotary_row_order(w.shape[0], cfg["num_key_value_heads"])
        stored = w if order is None else w[order]
        data, qtype = (encode if w.ndim == 2 else as_float32)(hf_name, stored)
        writer.add_tensor(gguf_name(hf_name), data, raw_dtype=qtype)
        back = dequantize(data, qtype).reshape(w.shape)
        if order is not None:
            back = back[np.argsort(order)]
        seen[hf_name] = torch.from_numpy(np.array(back, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return seen


def load(path: Path) -> LoadedModel:
    """Load a HF directory or GGUF file in float32 on the CPU."""
    return load_model(LoadConfig(model=str(path), dtype="float32", device="cpu"), progress=False)


def forward_logits(loaded: LoadedModel, ids: list[int]) -> torch.Tensor:
    """Logits [len(ids), vocab] of one prefill over `ids`."""
    cache = DenseKVCache(loaded.config, len(ids), loaded.dtype, torch.device("cpu"))
    ctx = DenseContext([cache], [len(ids)])
    return loaded.model(torch.tensor(ids), torch.arange(len(ids)), ctx)


def assert_configs_match(gguf_cfg: ModelConfig, hf_cfg: ModelConfig) -> None:
    """The fields that shape the model and its stopping agree (floats to float32 precision)."""
    for field in (
        "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
        "num_kv_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings",
        "attention_bias", "bos_token_id", "eos_token_ids",
    ):  # fmt: skip
        assert getattr(gguf_cfg, field) == getattr(hf_cfg, field), field
    assert math.isclose(gguf_cfg.rms_norm_eps, hf_cfg.rms_norm_eps, rel_tol=1e-6)
    assert math.isclose(gguf_cfg.rope_theta, hf_cfg.rope_theta, rel_tol=1e-6)
    # Mistral checkpoints are converted under llama.cpp's "llama" architecture.
    expected_arch = "llama" if hf_cfg.architecture == "mistral" else hf_cfg.architecture
    assert gguf_cfg.architecture == expected_arch


F32_VARIANTS = ["llama", "smollm2", "qwen2", "mistral", "llama3"]


@pytest.fixture(scope="module", params=F32_VARIANTS)
def f32_pair(request, tmp_path_factory) -> tuple[str, Path, Path]:
    """(variant, HF directory, GGUF file with F32 tensors) of one tiny random model."""
    variant = request.param
    root = tmp_path_factory.mktemp(f"gguf-{variant}")
    hf_dir = write_tiny_model(root / "hf", variant)
    gguf_path = root / f"{variant}.gguf"
    # Half the files carry `{arch}.vocab_size`; the rest make the reader fall back.
    write_gguf(hf_dir, gguf_path, with_vocab_size=variant in ("llama", "qwen2"))
    return variant, hf_dir, gguf_path


def test_config_matches_hf(f32_pair):
    variant, hf_dir, gguf_path = f32_pair
    gguf_cfg, hf_cfg = read_gguf_config(gguf_path), read_hf_config(hf_dir)
    assert_configs_match(gguf_cfg, hf_cfg)
    assert gguf_cfg.name == hf_dir.name
    if variant == "llama3":
        assert gguf_cfg.rope_scaling is not None and hf_cfg.rope_scaling is not None
        assert gguf_cfg.rope_scaling.kind == "llama3"
        assert gguf_cfg.rope_scaling.factor == pytest.approx(hf_cfg.rope_scaling.factor)
    else:
        assert gguf_cfg.rope_scaling is None


def test_f32_logits_match_safetensors(f32_pair):
    _, hf_dir, gguf_path = f32_pair
    from_hf, from_gguf = load(hf_dir), load(gguf_path)
    ref, got = forward_logits(from_hf, TOKENS), forward_logits(from_gguf, TOKENS)
    assert got.shape == ref.shape == (len(TOKENS), BASE["vocab_size"])
    assert (got - ref).abs().max().item() <= 1e-4
    # llama3 rope scaling read back from rope_freqs.weight gives the same frequencies.
    torch.testing.assert_close(from_gguf.model.inv_freq, from_hf.model.inv_freq)


# --- quantized storage -------------------------------------------------------

# Wide enough that every 2-D weight has rows of a multiple of 256 (the K-quant block).
WIDE = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)


def write_wide_model(path: Path, seed: int = 0) -> Path:
    """A random llama checkpoint (untied) whose weights all fit K-quant blocks; the directory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    kwargs = {**BASE, **VARIANTS["llama"], **WIDE}
    config = AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.05)
            else:  # norm weights
                p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(path)
    return path


def random_k_blocks(qtype: GGMLQuantizationType, array: np.ndarray, seed: int) -> np.ndarray:
    """Random K-quant blocks [rows, bytes per row] for a tensor shaped like `array`.

    gguf cannot quantize to K-quants, so the blocks are random bytes with
    scales set to give weights of roughly the magnitude of the float ones.
    """
    block, block_bytes = GGML_QUANT_SIZES[qtype]
    rows, cols = array.shape
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(rows * cols // block, block_bytes), dtype=np.uint8)
    if qtype == Q.Q4_K:  # d, dmin (f16) first; value = d * scale * q - dmin * min
        blocks[:, 0:4] = np.array([1e-4, 3e-4], dtype=np.float16).view(np.uint8)
    else:  # Q6_K: d (f16) last; value = d * scale * (q - 32)
        blocks[:, -2:] = np.array([2.5e-5], dtype=np.float16).view(np.uint8)
    return blocks.reshape(rows, cols // block * block_bytes)


def encoder_for(qtype: GGMLQuantizationType) -> Encoder:
    """Store every 2-D tensor as `qtype` (random blocks for K-quants)."""

    def encode(name: str, array: np.ndarray) -> tuple[np.ndarray, GGMLQuantizationType]:
        if qtype in (Q.Q4_K, Q.Q6_K):
            return random_k_blocks(qtype, array, seed=sum(map(ord, name))), qtype
        if qtype == Q.F16:
            return array.astype(np.float16), qtype
        return quantize(array, qtype), qtype

    return encode


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory) -> Path:
    return write_wide_model(tmp_path_factory.mktemp("gguf-wide") / "hf")


@pytest.mark.parametrize(
    "qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q6_K], ids=lambda q: q.name
)
def test_quantized_logits_match_dequantized_safetensors(qtype, wide_model, tmp_path):
    """A quantized GGUF runs like a safetensors copy holding gguf's own dequantized weights."""
    from transformers import AutoModelForCausalLM

    gguf_path = tmp_path / "model.gguf"
    dequantized = write_gguf(wide_model, gguf_path, encode=encoder_for(qtype))
    ref_dir = tmp_path / "ref"
    model = AutoModelForCausalLM.from_pretrained(wide_model, dtype=torch.float32)
    model.load_state_dict(dequantized)
    model.save_pretrained(ref_dir)
    if qtype not in (Q.F16, Q.BF16, Q.Q4_K, Q.Q6_K):  # lossy for real: weights changed
        original = load_file(wide_model / "model.safetensors")["lm_head.weight"]
        assert not torch.equal(dequantized["lm_head.weight"], original)
    ref = forward_logits(load(ref_dir), TOKENS)
    got = forward_logits(load(gguf_path), TOKENS)
    assert torch.isfinite(ref).all()
    assert (got - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    ("qtype", "mode"),
    [(Q.Q8_0, "int8"), (Q.Q5_0, "int8"), (Q.Q4_0, "int4"), (Q.Q4_1, "int4"), (Q.Q4_K, "int4"),
     (Q.Q6_K, "int8")],
    ids=lambda v: getattr(v, "name", v),
)  # fmt: skip
def test_quantized_mode_stays_close_to_dequantized(qtype, mode, wide_model, tmp_path):
    """In bfloat16 with `--quantization auto`, a GGUF keeps its precision and its logits.

    The reference is the same file dequantized to float32. Mean KL bound 1e-3: dense
    bfloat16 alone costs ~4e-5 here and the quantized modes measured 7e-5 to 2.5e-4
    (int8 rows requantized per channel cost most), while a wrong grid (min/max on
    Q4_0, since fixed) measured 1.2e-2 and a layout bug gives KL of order 1.
    """
    gguf_path = tmp_path / "model.gguf"
    write_gguf(wide_model, gguf_path, encode=encoder_for(qtype))
    # 16 rows run the quantized kernels, 48 the dequantize-then-matmul path (DIRECT_MAX_ROWS)
    ids = TOKENS + TOKENS[::-1] * 2
    ref = forward_logits(load(gguf_path), ids).log_softmax(-1)
    quant = load_model(LoadConfig(model=str(gguf_path), dtype="bfloat16"), progress=False)
    dense = load_model(LoadConfig(model=str(gguf_path), dtype="bfloat16", quantization="none"),
                       progress=False)  # fmt: skip
    assert quant.quantization == mode and dense.quantization == "none"
    assert quant.memory_bytes < dense.memory_bytes * (0.55 if mode == "int8" else 0.4)
    kl = {}
    for name, loaded in (("quant", quant), ("dense", dense)):
        got = torch.cat([forward_logits(loaded, ids[:16]), forward_logits(loaded, ids)[16:]])
        got = got.float().log_softmax(-1)
        kl[name] = (ref.exp() * (ref - got)).sum(-1).mean().item()
        top1 = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
        print(f"{qtype.name} {name}: mean KL {kl[name]:.2e}, top-1 agreement {top1:.3f}")
        assert top1 >= 0.85  # random weights: flat logits, many near-ties; KL is the real check
    assert kl["quant"] <= 1e-3
