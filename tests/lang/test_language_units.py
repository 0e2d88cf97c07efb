"""The parts of the language that need no model: templates, choice scoring, expressions."""

from __future__ import annotations

import pytest
from helpers.tiny_tokenizer import CHATML_TEMPLATE

import radixlm.lang as rl
from radixlm.lang.chat_template import ChatTemplate, jinja_renderer, template_for_model_path
from radixlm.lang.ir import Gen, Sequence, Text, parse_typed
from radixlm.lang.select import choice_logprobs, pick

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are SmolLM<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def written(template: ChatTemplate, messages: list[dict[str, str]]) -> str:
    """What a program writes for `messages`, turn by turn, as the interpreter does."""
    text = ""
    if messages[0]["role"] != "system" and template.default_system_prompt:
        text += template.prefix("system") + template.default_system_prompt
        text += template.suffix("system")
    for m in messages:
        text += template.prefix(m["role"]) + m["content"] + template.suffix(m["role"])
    return text


@pytest.mark.parametrize("source", [CHATML_TEMPLATE, SMOLLM2_TEMPLATE, LLAMA3_TEMPLATE])
@pytest.mark.parametrize("with_system", [True, False])
def test_derived_roles_write_what_the_template_renders(source, with_system):
    template = ChatTemplate.from_jinja(source)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "2+2?"}]  # fmt: skip
    if with_system:
        messages.insert(0, {"role": "system", "content": "Be brief."})
    render = jinja_renderer(source)
    assert written(template, messages) == render(messages, False)
    # Opening an assistant turn gives exactly the template's generation prompt.
    opened = written(template, messages) + template.prefix("assistant")
    assert opened == render(messages, True)


def test_default_system_prompt_and_named_templates():
    assert ChatTemplate.from_jinja(SMOLLM2_TEMPLATE).default_system_prompt == "You are SmolLM"
    assert ChatTemplate.from_jinja(CHATML_TEMPLATE).default_system_prompt is None
    assert template_for_model_path("/models/SmolLM2-135M-Instruct.gguf").name == "smollm2"
    assert template_for_model_path("/models/unknown").name == "default"
    with pytest.raises(ValueError, match="unknown chat template"):
        rl.named_template("nope")


def test_choice_logprobs_keep_the_tokens_that_hold_the_choice():
    # "... is" + " blue": the prompt's last tokens, then " bl" + "ue".
    entries = [[-1.0, 5, " a"], [-2.0, 6, " is"], [-0.5, 7, " bl"], [-0.25, 8, "ue"]]
    assert choice_logprobs(entries, " blue") == [-0.5, -0.25]
    # Token healing: the prompt ended in a space merged into the choice's first token.
    healed = [[-1.0, 5, " a"], [-2.0, 6, " is"], [-0.5, 7, " blue"]]
    assert choice_logprobs(healed, "blue") == [-0.5]
    assert choice_logprobs([[None, 1, "x"], [-3.0, 2, "y"]], "xy") == [-3.0]


def test_pick_methods():
    lps = [[-1.0, -1.0], [-1.5], [-0.9, -5.0]]
    assert pick(["a", "b", "c"], lps, "token_length_normalized").choice == "a"
    assert pick(["a", "b", "c"], lps, "sum").choice == "b"
    assert pick(["a", "b", "c"], lps, "greedy").choice == "c"
    assert pick(["a", "b"], [[-1.0], [-1.0]], "sum").index == 0  # ties: the earlier choice


def test_expressions_combine_with_text_and_check_their_options():
    seq = "Q: " + rl.gen("a") + "\n"
    assert isinstance(seq, Sequence) and isinstance(seq.items[1], Gen)
    assert seq.items[0] == Text("Q: ") and seq.items[2] == Text("\n")
    assert rl.gen("n", dtype=int).options.regex is not None
    with pytest.raises(ValueError):
        rl.gen("n", dtype=int, regex="[0-9]")
    with pytest.raises(ValueError):
        rl.gen("n", dtype=list)
    with pytest.raises(ValueError):
        rl.select("c", choices=[])
    assert parse_typed(" 42", int) == 42 and parse_typed("True", bool) is True
    assert rl.gen("j", json_schema={"type": "object"}).parse('{"a": 1}') == {"a": 1}


def test_role_misuse_is_a_program_error(lang_engine):
    @rl.function
    def nested(s):
        with s.user():
            s += rl.assistant("no")

    with pytest.raises(rl.ProgramError, match="inside the open user turn"):
        nested.run(backend=rl.EngineBackend(lang_engine))
