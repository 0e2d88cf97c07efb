"""Tree of thought: fork the question into several lines of reasoning, then judge them.

The question is prefilled once (`fork` commits it) and every branch reuses it.

    make serve                      # in another terminal
    .venv/bin/python examples/tree_of_thought.py
"""

import argparse

import radixlm.lang as rl


@rl.function
def tree_of_thought(s, question, branches=3):
    s += rl.user(question)
    s += "Let us think about this in a few different ways.\n"
    forks = s.fork(branches)
    for i, f in enumerate(forks):
        f += rl.assistant(rl.gen("thought", max_tokens=48, temperature=0.8 + 0.1 * i))
    forks.join()
    for i, thought in enumerate(s["thought"]):
        s += f"Idea {i + 1}: {thought.strip()}\n"
    s += rl.user("Which idea is the most convincing? Answer 1, 2 or 3.")
    s += rl.assistant(rl.select("best", choices=[str(i + 1) for i in range(branches)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:30000")
    args = parser.parse_args()
    backend = rl.RuntimeEndpoint(args.url, record_requests=True)
    state = tree_of_thought.run(question="How could a city cut its traffic jams?",
                                backend=backend)  # fmt: skip
    for i, thought in enumerate(state["thought"]):
        print(f"--- idea {i + 1} ---\n{thought.strip()}")
    print(f"\nmost convincing: idea {state['best']}")
    branch_hits = [r.cached_tokens for r in backend.usage.records if r.kind == "gen"]
    print(f"cached prompt tokens of each branch: {branch_hits}")


if __name__ == "__main__":
    main()
