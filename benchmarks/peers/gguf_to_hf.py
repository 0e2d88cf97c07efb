"""Convert a GGUF model (by default the embedded SmolLM2-135M-Instruct Q4_1) into a HF directory.

Peers that cannot read GGUF (vLLM) serve this directory instead: config.json,
generation_config.json, the tokenizer files with the GGUF's chat template, and
model.safetensors in bfloat16 (the Q4_1 weights dequantized, so the peer computes
with the same numbers radixlm loads from the GGUF).

    .venv/bin/python benchmarks/peers/gguf_to_hf.py   # to ~/.cache/radixlm/hf/smollm2-135m-instruct
    .venv/bin/python benchmarks/peers/gguf_to_hf.py --out DIR --model path/to/model.gguf

Needs transformers, gguf and safetensors (all in radixlm's .venv); it prints the directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_OUT = Path("~/.cache/radixlm/hf") / DEFAULT_MODEL


def resolve_gguf(spec: str) -> Path:
    """A .gguf path, or a radixlm model name (resolved the way `radixlm serve --model` does)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    from radixlm.loader import resolve_model_path

    return resolve_model_path(spec)


def convert(gguf: Path, out: Path, *, force: bool = False) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = out.expanduser()
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file() and not force:
        return out
    out.mkdir(parents=True, exist_ok=True)
    src_dir, name = str(gguf.parent), gguf.name

    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    if not tokenizer.chat_template:
        sys.exit(f"{gguf} has no tokenizer.chat_template: chat requests would have no template")
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.bfloat16)
    # transformers dequantizes GGUF weights on load but still marks the model quantized
    # ("gguf"), which save_pretrained refuses: the weights are plain bfloat16 tensors now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.dtype = torch.bfloat16
    # The GGUF's EOS is the chat turn end (<|im_end|>): generation stops there.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL,
                    help=f"a .gguf file or a radixlm model name (default {DEFAULT_MODEL})")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help=f"output directory (default {DEFAULT_OUT})")
    ap.add_argument("--force", action="store_true", help="convert again even if --out has a model")
    args = ap.parse_args()
    print(convert(resolve_gguf(args.model), args.out, force=args.force))


if __name__ == "__main__":
    main()
