"""Few-shot classification over a batch: the shared examples are prefilled once.

    make serve                      # in another terminal
    .venv/bin/python examples/few_shot.py
"""

import argparse

import radixlm.lang as rl

EXAMPLES = (
    "Classify the sentiment of each review as positive or negative.\n"
    "Review: The food was wonderful and the staff were kind.\nSentiment: positive\n"
    "Review: I waited an hour and the soup was cold.\nSentiment: negative\n"
)


@rl.function
def classify(s, review):
    s += EXAMPLES + "Review: " + review + "\nSentiment:"
    s += rl.gen("label", max_tokens=3, temperature=0, stop="\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:30000")
    args = parser.parse_args()
    backend = rl.RuntimeEndpoint(args.url)
    reviews = ["Lovely view and a friendly host.", "The battery died after two days.",
               "I would happily come back.", "Rude waiter, tiny portions."]  # fmt: skip
    states = classify.run_batch([{"review": r} for r in reviews], backend=backend,
                                progress_bar=True)  # fmt: skip
    for review, state in zip(reviews, states, strict=True):
        print(f"{review!r:45} -> {state['label'].strip()}")
    print(f"cache hit rate of these requests: {backend.usage.cache_hit_rate:.0%}")


if __name__ == "__main__":
    main()
