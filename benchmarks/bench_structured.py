"""JSON-schema decoding on SmolLM2: jump-forward on vs off, and vs unconstrained decoding.

    .venv/bin/python benchmarks/bench_structured.py [--model smollm2-135m-instruct] \
        [--requests 8] [--repeat 3]

All three configurations run the same chat prompts on the same loaded weights,
in alternating rounds (benchmarks/timing.py), each on its own engine:

- constrained, jump-forward on: the grammar's forced text (keys, punctuation) is
  fed as a draft and checked in one forward;
- constrained, jump-forward off: every token decoded one by one;
- unconstrained: the same prompts with `ignore_eos` and as many output tokens
  as the constrained answers had, so the token count matches.

Greedy decoding, so on and off must produce identical answers (checked).
Prints a markdown table: seconds per batch, output tokens/s, decode steps,
tokens from jump-forward, and each row's ratio to jump-forward off.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from timing import interleaved

import radixlm
from radixlm.config import LoadConfig
from radixlm.loader import load_model
from radixlm.tokenizer import load_tokenizer

# A tool-call style record: long fixed keys, short free values.
SCHEMA = {
    "type": "object",
    "properties": {
        "customer_full_name": {"type": "string", "maxLength": 24},
        "customer_age_in_years": {"type": "integer", "minimum": 0, "maximum": 120},
        "preferred_contact_method": {"enum": ["email", "phone", "post"]},
        "is_existing_customer": {"type": "boolean"},
        "shipping_address_city": {"type": "string", "maxLength": 20},
    },
    "required": ["customer_full_name", "customer_age_in_years", "preferred_contact_method",
                 "is_existing_customer", "shipping_address_city"],
    "additionalProperties": False,
}  # fmt: skip
PEOPLE = ["Alice Martin", "Bob Chen", "Carla Diaz", "Deepak Rao", "Emma Weber", "Farid Haddad",
          "Grace Kim", "Hugo Lefebvre", "Ines Costa", "Jonas Berg"]  # fmt: skip


def prompts(tok, n: int) -> list[list[int]]:
    out = []
    for i in range(n):
        who = PEOPLE[i % len(PEOPLE)]
        msg = f"Write a JSON customer record for {who}, aged {20 + 3 * i}, living in Lyon."
        out.append(tok.apply_chat_template([{"role": "user", "content": msg}],
                                           add_generation_prompt=True))  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    args = ap.parse_args()
    torch.manual_seed(0)
    loaded = load_model(LoadConfig(model=args.model), progress=False)
    tok = load_tokenizer(loaded.path, extra_eos_token_ids=loaded.config.eos_token_ids)
    ids = prompts(tok, args.requests)
    common = {"loaded": loaded, "tokenizer": tok, "max_total_tokens": 16384,
              "disable_radix_cache": True}  # fmt: skip
    engines = {
        "json, jump-forward on": radixlm.Engine(**common),
        "json, jump-forward off": radixlm.Engine(**common, disable_jump_forward=True),
    }
    constrained = {"json_schema": json.dumps(SCHEMA), "temperature": 0,
                   "max_new_tokens": args.max_new_tokens}  # fmt: skip
    results = {name: eng.generate(input_ids=ids, sampling_params=constrained)
               for name, eng in engines.items()}  # fmt: skip
    on, off = results["json, jump-forward on"], results["json, jump-forward off"]
    assert [r["output_ids"] for r in on] == [r["output_ids"] for r in off], "on != off"
    for r in on:
        json.loads(r["text"])  # a schema-valid answer (the engine tests check validation)
    out_tokens = sum(r["meta_info"]["completion_tokens"] for r in on)
    per_req = round(out_tokens / len(on))
    engines["unconstrained"] = radixlm.Engine(**common)
    free = {"temperature": 0, "max_new_tokens": per_req, "ignore_eos": True}
    params = {"json, jump-forward on": constrained, "json, jump-forward off": constrained,
              "unconstrained": free}  # fmt: skip
    steps: dict[str, list[int]] = {n: [] for n in engines}

    def run(name: str):
        def call() -> None:
            eng = engines[name]
            before = eng.get_stats()
            eng.generate(input_ids=ids, sampling_params=params[name])
            after = eng.get_stats()
            steps[name].append(after["decode_steps"] - before["decode_steps"])
            steps[name + "/jf"] = [after["jump_forward_tokens"] - before["jump_forward_tokens"]]
        return call

    secs = interleaved({n: run(n) for n in engines}, args.repeat)
    print(f"model {args.model}, {args.requests} requests, {out_tokens} output tokens per batch "
          f"({per_req} per request), greedy; torch {torch.__version__}, "
          f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}\n")  # fmt: skip
    print("| configuration | s / batch | output tok/s | decode steps | jump-forward tokens "
          "| speed vs jump-forward off |")
    print("|---|---|---|---|---|---|")
    base = secs["json, jump-forward off"]
    for name in engines:
        n_tokens = out_tokens if name != "unconstrained" else per_req * len(ids)
        print(f"| {name} | {secs[name]:.2f} | {n_tokens / secs[name]:.1f} | {steps[name][-1]} "
              f"| {steps.get(name + '/jf', [0])[-1]} | {base / secs[name]:.2f}x |")
    print("\nexample answer:", on[0]["text"])
    for eng in engines.values():
        eng.check_integrity()
        eng.shutdown()


if __name__ == "__main__":
    main()
