"""Chat rendering with assistant masks that work for any template.

    text = render(tok, messages, "chatml", add_generation_prompt=True)
    ids, mask = encode_conversation(tok, messages, "llama3")   # mask: True on every assistant-reply token + its EOT
    prompt_ids = encode_prompt(tok, messages[:-1], "llama3")   # == ids[:len(prompt_ids)]

A template is the tokenizer's own `chat_template` (`auto`, falling back to chatml), a name shipped in
`posttrain/templates/` (chatml, llama3, alpaca, plain), a path to a `.jinja` file, or Jinja source itself.

The mask needs no `{% generation %}` markers and never searches for the reply text: for every assistant message i we
render the conversation up to message i with the generation prompt and up to message i inclusive; the difference is
the reply's character span (content + end-of-turn token; trailing whitespace dropped). The text is tokenised once with
offsets and tokens overlapping a span are marked. If the tokens before a reply are not exactly the tokens of the text
before it on its own (BPE merging across the boundary) we cut the text there, so the prompt's ids are always a prefix
of the conversation's ids. Templates that do not render prefixes as text prefixes (e.g. ones that drop earlier
reasoning) fall back to a token-level longest-common-prefix diff.

Text is tokenised without special tokens and exactly one BOS is added when the tokenizer normally adds one and the
template did not render one itself.
"""

from __future__ import annotations

import functools
import json
import re
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from posttrain.data.schema import Message

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
"""Where the named templates live, one `<name>.jinja` each (see README.md there)."""

BOS_TEXTS = ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>")
"""Text a template may start with that already plays the part of BOS (besides the tokenizer's own bos_token)."""

_GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


def template_names() -> list[str]:
    """Names of the templates shipped with posttrain."""
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.jinja"))


@functools.lru_cache(maxsize=64)
def _read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def get_template(name: str, tokenizer: Any) -> str:
    """The Jinja source for `name`: auto | a shipped name | a path to a .jinja file | Jinja source."""
    if name == "auto":
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, dict):
            own = own.get("default")
        if own:
            return own
        if not _is_one_token(tokenizer, "<|im_end|>"):
            warnings.warn(
                "the tokenizer has no chat template and no <|im_end|> token: template=auto falls back to chatml, "
                "whose end-of-turn marker is then plain text, so generation stops only at EOS. Consider "
                "template=alpaca or template=plain, which end replies with EOS.",
                stacklevel=3,
            )
        return _read(str(TEMPLATES_DIR / "chatml.jinja"))
    if "{{" in name or "{%" in name:
        return name
    shipped = TEMPLATES_DIR / f"{name}.jinja"
    if shipped.is_file():
        return _read(str(shipped))
    path = Path(name).expanduser()
    if path.is_file():
        return _read(str(path.resolve()))
    raise ValueError(
        f"unknown chat template {name!r}: expected 'auto', one of {', '.join(template_names())}, "
        f"or the path to a .jinja file"
    )


def _is_one_token(tokenizer: Any, text: str) -> bool:
    tid = tokenizer.convert_tokens_to_ids(text)
    return tid is not None and tid != tokenizer.unk_token_id


# --------------------------------------------------------------------------------------------------------------
# rendering


def _raise(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


@functools.lru_cache(maxsize=32)
def _compile(source: str):
    """A sandboxed Jinja template with the helpers Hugging Face templates expect ({% generation %} tags ignored)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, **_: json.dumps(
        x, indent=indent, ensure_ascii=ensure_ascii
    )
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(_GENERATION_TAG.sub("", source))


def _dicts(messages: Sequence[Message | dict]) -> list[dict[str, str]]:
    return [
        m.to_dict() if isinstance(m, Message) else {"role": m["role"], "content": m["content"]}
        for m in messages
    ]


def _special_tokens(tokenizer: Any) -> dict[str, str]:
    return {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}


def _render(tokenizer: Any, source: str, messages: list[dict], add_generation_prompt: bool) -> str:
    return _compile(source).render(
        messages=messages, add_generation_prompt=add_generation_prompt, **_special_tokens(tokenizer)
    )


def render(
    tokenizer: Any,
    messages: Sequence[Message | dict],
    template: str = "auto",
    add_generation_prompt: bool = False,
) -> str:
    """The conversation as text, as the model sees it."""
    return _render(tokenizer, get_template(template, tokenizer), _dicts(messages), add_generation_prompt)


# --------------------------------------------------------------------------------------------------------------
# tokenisation with masks


def _needs_bos(tokenizer: Any, text: str) -> bool:
    """Add BOS when the tokenizer adds one on its own and the rendered text does not already start with one."""
    bos = tokenizer.bos_token_id
    if bos is None or text.startswith(tuple(t for t in (*BOS_TEXTS, tokenizer.bos_token) if t)):
        return False
    return tokenizer("a")["input_ids"][:1] == [bos]


def _assistant_spans(
    tokenizer: Any, source: str, msgs: list[dict], text: str
) -> list[tuple[int, int]] | None:
    """Character spans of the assistant replies in `text`, by prefix diff; None if prefixes are not text prefixes."""
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, source, msgs[:i], True)
        upto = _render(tokenizer, source, msgs[: i + 1], False)
        if not (upto.startswith(before) and text.startswith(upto)):
            return None
        spans.append((len(before), len(before) + len(upto[len(before) :].rstrip())))
    return spans


def _tokenize(
    tokenizer: Any, text: str, starts: list[int]
) -> tuple[list[int], list[tuple[int, int]], list[int]]:
    """(ids, char offsets, token index of each start): one pass, cut at a start only where tokens would cross it."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if not starts:
        return ids, offsets, []
    s = starts[-1]
    head_ids, head_offsets, head_idx = _tokenize(tokenizer, text[:s], starts[:-1])
    if ids[: len(head_ids)] == head_ids:
        return ids, offsets, [*head_idx, len(head_ids)]
    tail = tokenizer(text[s:], add_special_tokens=False, return_offsets_mapping=True)
    tail_offsets = [(a + s, b + s) for a, b in tail["offset_mapping"]]
    return head_ids + list(tail["input_ids"]), head_offsets + tail_offsets, [*head_idx, len(head_ids)]


def _encode_spans(tokenizer: Any, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[bool]]:
    ids, offsets, first = _tokenize(tokenizer, text, [s for s, _ in spans])
    mask = [False] * len(ids)
    for (_, end), i in zip(spans, first):
        while i < len(ids) and offsets[i][0] < end:
            mask[i] = True
            i += 1
    if _needs_bos(tokenizer, text):
        return [tokenizer.bos_token_id, *ids], [False, *mask]
    return ids, mask


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Plain text (no template) with the one-BOS rule."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.bos_token_id, *ids] if _needs_bos(tokenizer, text) else list(ids)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _encode_by_token_diff(
    tokenizer: Any, source: str, msgs: list[dict], text: str
) -> tuple[list[int], list[bool]]:
    """Fallback: the reply's tokens lie between the common prefixes with the two prefix renderings."""
    ids = encode_text(tokenizer, text)
    mask = [False] * len(ids)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        a = _common_prefix(ids, encode_text(tokenizer, _render(tokenizer, source, msgs[:i], True)))
        b = _common_prefix(ids, encode_text(tokenizer, _render(tokenizer, source, msgs[: i + 1], False)))
        while b > a and not tokenizer.decode([ids[b - 1]]).strip():
            b -= 1
        mask[a:b] = [True] * (b - a)
    return ids, mask


def encode_conversation(
    tokenizer: Any, messages: Sequence[Message | dict], template: str = "auto"
) -> tuple[list[int], list[bool]]:
    """(ids, mask): mask is True on every assistant-reply token including its EOS / end-of-turn token."""
    source, msgs = get_template(template, tokenizer), _dicts(messages)
    text = _render(tokenizer, source, msgs, False)
    spans = _assistant_spans(tokenizer, source, msgs, text) if tokenizer.is_fast else None
    if spans is None:
        return _encode_by_token_diff(tokenizer, source, msgs, text)
    return _encode_spans(tokenizer, text, spans)


def encode_prompt(tokenizer: Any, messages: Sequence[Message | dict], template: str = "auto") -> list[int]:
    """Ids a generation starts from: the prompt and the generation prompt, with exactly one BOS.

    Equal to the first ids of `encode_conversation(prompt + [reply])` (the same cuts are made before earlier replies).
    """
    source, msgs = get_template(template, tokenizer), _dicts(messages)
    text = _render(tokenizer, source, msgs, True)
    spans = _assistant_spans(tokenizer, source, msgs, text) if tokenizer.is_fast else None
    if spans is None:
        return encode_text(tokenizer, text)
    return _encode_spans(tokenizer, text, spans)[0]
