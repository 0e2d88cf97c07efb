"""An agent loop: at each step the model selects a tool, the program runs it, and loops.

    make serve                      # in another terminal
    .venv/bin/python examples/agent_select.py
"""

import argparse
import ast
import operator

import radixlm.lang as rl

TOOLS = ["calculator", "lookup", "finish"]
FACTS = {"france": "The capital of France is Paris.", "water": "Water boils at 100 C."}
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv}  # fmt: skip


def calculate(expression: str) -> str:
    """Evaluate + - * / over numbers (no names, no calls)."""
    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError("only + - * / over numbers")

    try:
        return str(ev(ast.parse(expression.strip(), mode="eval").body))
    except (ValueError, SyntaxError, ZeroDivisionError) as e:
        return f"error: {e}"


def lookup(topic: str) -> str:
    return FACTS.get(topic.strip().lower(), "no entry")


@rl.function
def agent(s, task, max_steps=4):
    s += rl.system("You solve tasks with tools: calculator (arithmetic), lookup (a topic "
                   "among: france, water), finish (give the final answer).")  # fmt: skip
    s += rl.user(task)
    last_call, result = None, None
    for step in range(max_steps):
        with s.assistant():
            s += "Tool: " + rl.select(f"tool{step}", choices=TOOLS) + "\nInput: "
            s += rl.gen(f"input{step}", max_tokens=24, stop="\n", temperature=0)
        call = (s[f"tool{step}"], s[f"input{step}"].strip())
        if call[0] == "finish" or call == last_call:  # done, or asking the same again
            s.set_var("answer", call[1] if call[0] == "finish" else result)
            return
        result = calculate(call[1]) if call[0] == "calculator" else lookup(call[1])
        s += rl.user(f"Result: {result}\nIf that answers the task, use finish with the answer.")
        last_call = call
    s.set_var("answer", result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:30000")
    args = parser.parse_args()
    state = agent.run(task="What is 12 times 7?", backend=rl.RuntimeEndpoint(args.url))
    for m in state.messages()[1:]:
        print(f"[{m['role']}] {m['content']}")
    print(f"answer: {state['answer']}")


if __name__ == "__main__":
    main()
