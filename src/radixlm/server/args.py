"""Every command-line flag of `radixlm`, in one place, turned into frozen configs."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from radixlm.config import LoadConfig
from radixlm.generation import GenerationParams
from radixlm.loader import DEFAULT_MODEL


@dataclass(frozen=True)
class ChatConfig:
    """A terminal chat or one-shot generation on one model."""

    load: LoadConfig
    params: GenerationParams
    prompt: str | None = None  # one-shot when set
    system: str | None = None
    raw: bool = False  # send the prompt as plain text, without the chat template


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"a HF model directory, a .gguf file, or {DEFAULT_MODEL!r} (default)",
    )
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights and KV dtype (auto: float32 on CPU, bfloat16 on CUDA)",
    )
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (auto: cuda if present)")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)


def _add_chat_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    _add_sampling_args(p)
    p.add_argument("--prompt", default=None, help="answer this one prompt and exit")
    p.add_argument("--system", default=None, help="a system message for the chat template")
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radixlm", description="radixlm LLM engine")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_chat_args(sub.add_parser("serve", help="serve the model (terminal chat)"))
    _add_chat_args(sub.add_parser("generate", help="one-shot or interactive generation"))
    return parser


def chat_config_from_args(ns: argparse.Namespace) -> ChatConfig:
    """Validate parsed flags into a ChatConfig; raises ValueError naming the bad flag."""
    try:
        params = GenerationParams(
            max_new_tokens=ns.max_new_tokens,
            temperature=ns.temperature,
            top_k=ns.top_k,
            top_p=ns.top_p,
            seed=ns.seed,
        )
    except ValueError as e:
        raise ValueError(f"--{str(e).split()[0].replace('_', '-')}: {e}") from None
    load = LoadConfig(model=ns.model, dtype=ns.dtype, device=ns.device)
    return ChatConfig(load=load, params=params, prompt=ns.prompt, system=ns.system, raw=ns.raw)
