"""End-of-text markers written as text in data, which no model should learn to spell out.

Public data carries other tokenizers' end tokens as plain text: T0/P3 completions end in `<|endoftext|>`, ShareGPT
dumps in `</s>`, ChatML exports in `<|im_end|>`. Tokenised as text they become a few ordinary pieces (`<`, `|`,
`endo`, ...) trained right before the real end-of-turn token; when the marker is also a special token of the
tokenizer in use, it becomes that control token in the middle of a turn. So, in every message:

    text, stripped, mapped = clean_markers("Business<|endoftext|>", markers_of(tok), tok.eos_token)  # "Business", 1, 0
    msgs = clean_messages(tok, [{"role": "assistant", "content": "Business</s>"}], counts)    # what chat.py encodes

* at the end of a message (any run of markers and whitespace): stripped, with the whitespace before it; the chat
  template then ends the turn with the tokenizer's own end-of-turn token (SFT's text format appends its EOS);
* anywhere else: replaced by the tokenizer's own EOS token, the token that means "the text ends here" to this
  model (removed when the tokenizer has none). Text that uses `</s>` as an HTML tag mid-message is mapped too,
  which the count shows.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from typing import Any

END_MARKERS = (
    "<|endoftext|>",  # GPT-2 / GPT-3 / GPT-NeoX, Qwen base, Phi-2; T0/P3 and Self-Instruct completions
    "</s>",  # Llama 1-2, Mistral, T5, Vicuna / ShareGPT exports
    "<|im_end|>",  # ChatML (Qwen, Yi, OpenHermes)
    "<|eot_id|>",  # Llama 3 end of turn
    "<|eom_id|>",  # Llama 3.1 end of message (tool calls)
    "<|end_of_text|>",  # Llama 3 end of text
    "<|end|>",  # Phi-3, gpt-oss (harmony) end of message
    "<|return|>",  # gpt-oss (harmony) end of the final message
    "<end_of_turn>",  # Gemma end of turn
    "<eos>",  # Gemma end of text
    "<|end▁of▁sentence|>",  # DeepSeek (U+2581 between the words)
    "<|EOT|>",  # DeepSeek-Coder
)
"""End-of-text and end-of-turn tokens of common tokenizers, as they appear written out in data."""


def markers_of(tokenizer: Any) -> tuple[str, ...]:
    """END_MARKERS plus the tokenizer's own EOS token when it is another string."""
    eos = getattr(tokenizer, "eos_token", None)
    return END_MARKERS if not isinstance(eos, str) or not eos or eos in END_MARKERS else (*END_MARKERS, eos)


@functools.lru_cache(maxsize=16)
def _patterns(markers: tuple[str, ...]) -> tuple[re.Pattern, re.Pattern]:
    """(any one marker, a trailing run of markers and whitespace); longest first so no marker eats another."""
    one = "|".join(re.escape(m) for m in sorted(markers, key=len, reverse=True))
    return re.compile(one), re.compile(rf"(?:\s*(?:{one}))+\s*\Z")


def strip_trailing(text: str, markers: tuple[str, ...] = END_MARKERS) -> tuple[str, int]:
    """(text without the markers it ends with, how many were stripped); text without them is returned as it is."""
    one, tail = _patterns(tuple(markers))
    m = tail.search(text)
    if m is None:
        return text, 0
    return text[: m.start()], len(one.findall(m.group()))


def clean_markers(text: str, markers: tuple[str, ...], eos: str | None) -> tuple[str, int, int]:
    """(text, markers stripped from its end, markers elsewhere replaced by `eos`), as the module docstring says."""
    text, stripped = strip_trailing(text, markers)
    text, mapped = _patterns(tuple(markers))[0].subn(eos or "", text)
    return text, stripped, mapped


def clean_messages(
    tokenizer: Any, msgs: list[dict[str, str]], counts: Counter | None = None
) -> list[dict[str, str]]:
    """{role, content} messages cleaned for `tokenizer`; `counts` gets end_markers_stripped / end_markers_mapped."""
    markers, out = markers_of(tokenizer), []
    for m in msgs:
        content, stripped, mapped = clean_markers(m["content"], markers, tokenizer.eos_token)
        if counts is not None:
            counts["end_markers_stripped"] += stripped
            counts["end_markers_mapped"] += mapped
        out.append({**m, "content": content})
    return out
