"""Templates that rewrite earlier turns (Qwen3 strips `<think>` from assistant turns before the last user message
and gives the last turn an empty think block): every assistant turn is trained exactly as a `{% generation %}`-
marked version of the same template marks it, checked against transformers' own `return_assistant_tokens_mask`.
Before this, earlier turns of such templates silently got no trained tokens."""

import pytest

from posttrain.data.chat import encode_conversation, encode_prompt, render
from posttrain.models import tiny_tokenizer

QWEN3 = """{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set content = message.content %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- GEN_OPEN %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- content }}
            {%- endif %}
        {%- else %}
            {{- content }}
        {%- endif %}
        {{- '<|im_end|>' }}
        {%- GEN_CLOSE %}
        {{- '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}"""
"""Qwen3's chat template (tools left out): its think handling verbatim; GEN_OPEN / GEN_CLOSE mark where a
`{% generation %}`-marked version puts its tags (everything the assistant writes after its header)."""

PLAIN = QWEN3.replace("{%- GEN_OPEN %}\n", "").replace("{%- GEN_CLOSE %}\n", "")
MARKED = QWEN3.replace("{%- GEN_OPEN %}", "{%- generation %}").replace(
    "{%- GEN_CLOSE %}", "{%- endgeneration %}"
)

CONVERSATIONS = [
    [
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\nThe answer is 5."},
        {"role": "user", "content": "Reverse the word cat."},
        {"role": "assistant", "content": "<think>\nread it backwards\n</think>\n\ntac"},
    ],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello world"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I am posttrain's assistant."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "<think>\nsum\n</think>\n\n5"},
    ],
]


def hf_mask(tok, template, conv):
    out = tok.apply_chat_template(
        conv, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return list(out["input_ids"]), [bool(m) for m in out["assistant_masks"]]


@pytest.mark.parametrize("conv", CONVERSATIONS, ids=["think", "mixed"])
def test_every_turn_trained_as_the_generation_marked_template_marks_it(conv):
    tok = tiny_tokenizer(add_bos=False)
    assert render(tok, conv, PLAIN) == render(tok, conv, MARKED)  # the tags change no text
    assert "add them" not in render(tok, conv, PLAIN)  # the template does rewrite the earlier turn
    want = hf_mask(tok, MARKED, conv)
    assert encode_conversation(tok, conv, MARKED) == want  # tags read by posttrain
    ids, mask = encode_conversation(tok, conv, PLAIN)  # no tags: located by sentinel renderings
    assert (ids, mask) == want
    trained = [tok.decode([t for t, m in zip(ids, mask) if m])]
    assert "The answer is 5.<|im_end|>" in trained[0] or "Hello!<|im_end|>" in trained[0]


def test_prompt_ids_are_a_prefix_of_the_conversation():
    tok = tiny_tokenizer(add_bos=False)
    conv = CONVERSATIONS[0]
    ids, _ = encode_conversation(tok, conv, PLAIN)
    prompt = encode_prompt(tok, conv[:-1], PLAIN)
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n") and ids[: len(prompt)] == prompt


def test_a_reply_that_cannot_be_located_is_refused():
    """A template that renders an assistant reply twice (once in a summary line): no single span is the reply."""
    echo = PLAIN.replace(
        "{%- if add_generation_prompt %}",
        "{{- 'last: ' + messages[-1].content + '\\n' }}{%- if add_generation_prompt %}",
    )
    tok = tiny_tokenizer(add_bos=False)
    with pytest.raises(ValueError, match="cannot tell which tokens of assistant turn"):
        encode_conversation(tok, CONVERSATIONS[0], echo)
