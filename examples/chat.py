"""A multi-turn chat written as a program, streamed as it is generated.

    make serve                      # in another terminal
    .venv/bin/python examples/chat.py
"""

import argparse

import radixlm.lang as rl


@rl.function
def chat(s, questions):
    s += rl.system("You are a helpful assistant. Answer in one or two sentences.")
    for i, question in enumerate(questions):
        with s.user():
            s += question
        with s.assistant():
            s += rl.gen(f"answer{i}", max_tokens=64, temperature=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:30000")
    args = parser.parse_args()
    questions = ["What is the capital of France?", "And what is it famous for?"]
    state = chat.run(questions=questions, backend=rl.RuntimeEndpoint(args.url), stream=True)
    for i, question in enumerate(questions):
        print(f"user: {question}\nassistant: ", end="", flush=True)
        for piece in state.text_iter(f"answer{i}"):
            print(piece, end="", flush=True)
        print()
    print(f"\n{len(state.sync().messages())} turns")


if __name__ == "__main__":
    main()
