"""Programs written for SGLang's own frontend, run unchanged against a server.

`python sglang_programs.py URL` runs every program in `PROGRAMS` with
`sgl.RuntimeEndpoint(URL)` as the default backend and prints one JSON object:
program name -> what it produced (variables, the final text, the `meta_info`
of each generation, and the server's `cached_tokens` counter before and after),
or `{"error": "..."}` when the program failed. Safe to run only where `sglang`
is importable. It runs in its own process because importing `sglang` patches
`transformers`, which the test process must not see.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

import sglang as sgl

FEW_SHOT = "Q: What is 2+2?\nA: 4\nQ: What is the capital of France?\nA: Paris\n"
QUESTIONS = ["What is 1+1?", "What is 5+5?", "Name a color.", "What is the capital of Italy?"]
COLORS = [" blue", " green", " purple"]
JSON_REGEX = (  # a string, an int and a float field, each a valid JSON value
    r'\{"name": "[a-zA-Z ]{1,12}", "age": (0|[1-9][0-9]{0,2}), '
    r'"score": (0|[1-9][0-9]?)\.[0-9]{1,2}\}'
)
IPV4_REGEX = r"((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
IPV4_REGEX += r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"


@sgl.function
def few_shot(s, question):
    s += FEW_SHOT + "Q: " + question + "\nA:"
    s += sgl.gen("answer", max_tokens=12, stop="\n", temperature=0)


@sgl.function
def multi_turn(s):
    s += sgl.system("You are a terse assistant.")
    s += sgl.user("Say hello.")
    s += sgl.assistant(sgl.gen("first", max_tokens=8, temperature=0))
    s += sgl.user("Now say goodbye.")
    s += sgl.assistant(sgl.gen("second", max_tokens=8, temperature=0))


@sgl.function
def pick_color(s):
    s += "The sky on a clear day is the color"
    s += sgl.select("color", choices=COLORS)


@sgl.function
def branches(s):
    s += "Here are three short ideas for a weekend, one per line:\n"
    forks = s.fork(3)
    for i, f in enumerate(forks):
        f += f"{i + 1}." + sgl.gen("idea", max_tokens=8, stop="\n", temperature=0)
    forks.join()
    s += "Chosen: " + forks[0]["idea"]


@sgl.function
def streamed(s):
    s += "Count upwards: one, two,"
    s += sgl.gen("more", max_tokens=8, temperature=0, ignore_eos=True)


@sgl.function
def ip_address(s):
    s += "The IP address of the local host is "
    s += sgl.gen("ip", max_tokens=20, regex=IPV4_REGEX, temperature=0)


@sgl.function
def integer(s):
    s += "How many legs does a spider have? Answer: "
    s += sgl.gen("n", max_tokens=6, regex=r"[0-9]+", temperature=0)


@sgl.function
def person_json(s):
    s += "A person as JSON: "
    s += sgl.gen("person", max_tokens=48, regex=JSON_REGEX, temperature=0)


def _meta(state, name: str) -> dict[str, Any]:
    return state.get_meta_info(name) or {}


def _cached(backend) -> int:
    return int(backend.get_server_info()["cached_tokens"])


def run_few_shot(backend) -> dict[str, Any]:
    s = few_shot.run(question=QUESTIONS[0])
    return {"answer": s["answer"], "meta": _meta(s, "answer"), "text": s.text()}


def run_multi_turn(backend) -> dict[str, Any]:
    s = multi_turn.run()
    return {
        "first": s["first"],
        "second": s["second"],
        "metas": [_meta(s, "first"), _meta(s, "second")],
        "messages": s.messages(),
        "text": s.text(),
        "template": backend.get_chat_template().name,
    }


def run_select(backend) -> dict[str, Any]:
    s = pick_color.run()
    return {"color": s["color"], "meta": _meta(s, "color"), "prompt": s.text()[: -len(s["color"])]}


def run_fork(backend) -> dict[str, Any]:
    sgl.flush_cache()
    s = branches.run()
    return {"text": s.text(), "idea": s["idea"]}


def run_batch(backend) -> dict[str, Any]:
    sgl.flush_cache()
    states = few_shot.run_batch([{"question": q} for q in QUESTIONS], num_threads=len(QUESTIONS))
    return {
        "answers": [s["answer"] for s in states],
        "metas": [_meta(s, "answer") for s in states],
    }


def run_stream(backend) -> dict[str, Any]:
    s = streamed.run(stream=True)
    chunks = list(s.text_iter("more"))
    return {"chunks": chunks, "more": s["more"], "meta": _meta(s, "more")}


def run_sglang_stream_logprobs(backend) -> dict[str, Any]:
    """SGLang's own test program: streamed chunks carry only their own output logprobs and
    the cumulative `output_token_logprobs_length` (it asserts this itself)."""
    from sglang.test.test_programs import test_stream_logprobs

    test_stream_logprobs()
    return {"passed": True}


def _regex_program(program, name: str) -> Callable[[Any], dict[str, Any]]:
    def run(backend) -> dict[str, Any]:
        s = program.run()
        if s.error() is not None:
            raise RuntimeError(str(s.error()))
        return {name: s[name], "meta": _meta(s, name)}

    return run


PROGRAMS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "few_shot": run_few_shot,
    "multi_turn": run_multi_turn,
    "select": run_select,
    "fork": run_fork,
    "run_batch": run_batch,
    "stream": run_stream,
    "ip_address": _regex_program(ip_address, "ip"),
    "integer": _regex_program(integer, "n"),
    "person_json": _regex_program(person_json, "person"),
    "sglang_stream_logprobs": run_sglang_stream_logprobs,
}


def main(url: str) -> dict[str, Any]:
    """Run every program against `url`; returns name -> result (or {"error"})."""
    backend = sgl.RuntimeEndpoint(url)
    sgl.set_default_backend(backend)
    results: dict[str, Any] = {"model_info": backend.model_info}
    for name, run in PROGRAMS.items():
        try:
            before = _cached(backend)
            out = run(backend)
            out["server_cached_delta"] = _cached(backend) - before
        except Exception as e:  # reported to the test, which decides
            out = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
        results[name] = out
    return results


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
