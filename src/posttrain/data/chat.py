"""Chat rendering with assistant masks that work for any template.

    text = render(tok, messages, "chatml", add_generation_prompt=True)
    ids, mask = encode_conversation(tok, messages, "llama3")   # mask: True on every assistant-reply token + its EOT
    prompt_ids = encode_prompt(tok, messages[:-1], "llama3")   # == ids[:len(prompt_ids)]

A template is the tokenizer's own `chat_template` (`auto`, falling back to chatml), a name shipped in
`posttrain/templates/` (chatml, llama3, alpaca, plain), a path to a `.jinja` file, or Jinja source itself.

Which characters of the rendered text are trained, in order of authority:
  1. `{% generation %}` blocks, when the template has them: exactly what they enclose, as in transformers'
     `return_assistant_tokens_mask`.
  2. Prefix diff, when every prefix of the conversation renders as a prefix of the text: for every assistant
     message i we render the conversation up to message i with the generation prompt and up to message i
     inclusive; the difference is the reply's span (content + end-of-turn token; trailing whitespace dropped). The
     reply text is never searched for.
  3. Templates that rewrite earlier turns (Qwen3 strips `<think>` from every assistant turn before the last user
     message, and gives the last one an empty think block) fail 2. Each reply is then located in the full text by
     rendering it with two sentinel contents: where the renderings differ is the reply's rendered content; the span
     runs from the end of the generation prompt before it (so the last turn's think block is trained) to the end of
     the end-of-turn marker after it. This is what a `{% generation %}`-marked version of such a template marks.
     When a reply cannot be located that way the conversation is refused (ValueError), never silently untrained.
The text is tokenised once with offsets and tokens overlapping a span are marked. If the tokens before a reply are
not exactly the tokens of the text before it on its own (BPE merging across the boundary) we cut the text there, so
the prompt's ids are always a prefix of the conversation's ids.

Text is tokenised without special tokens and exactly one BOS is added when the tokenizer normally adds one and the
template did not render one itself. End-of-text markers written as text in a message (`<|endoftext|>`, `</s>`, ...)
are stripped from its end or mapped to the tokenizer's EOS first (`posttrain.data.markers`), here where every
trainer, evaluation and generation encodes; pass `counts=` (a Counter) to count them.
"""

from __future__ import annotations

import functools
import json
import re
import warnings
import weakref
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from posttrain.data.markers import clean_messages
from posttrain.data.schema import DataError, Message
from posttrain.errors import UsageError

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
"""Where the named templates live, one `<name>.jinja` each (see README.md there)."""

BOS_TEXTS = ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>")
"""Text a template may start with that already plays the part of BOS (besides the tokenizer's own bos_token)."""

_GENERATION_TAG = re.compile(r"\{%[-+]?\s*generation\s*[-+]?%\}")
GEN_OPEN, GEN_CLOSE = "\x02", "\x03"
"""Markers the `generation` tag puts around what it encloses while rendering (removed from the text)."""
SENTINELS = ("\u2460posttrain\u2461", "\u2462posttrain\u2463")
"""Two reply contents that differ in their first and last characters (see rule 3 above)."""


def template_names() -> list[str]:
    """Names of the templates shipped with posttrain."""
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.jinja"))


class TemplateChoiceError(UsageError, ValueError):
    """An unknown template name, or a template file that is not valid Jinja (exit 2: the option is wrong)."""


class TemplateRenderError(DataError):
    """The template refused a conversation (its `raise_exception`, or a rendering error)."""


@functools.lru_cache(maxsize=64)
def _read(path: str) -> str:
    from posttrain.data.readers import read_text

    return read_text(path)


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
    raise TemplateChoiceError(
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


class _Generation:
    """The `{% generation %}...{% endgeneration %}` block tag: renders its body between GEN_OPEN and GEN_CLOSE."""

    @staticmethod
    def extension():
        from jinja2 import nodes
        from jinja2.ext import Extension

        class GenerationExtension(Extension):
            tags = {"generation"}

            def parse(self, parser):
                lineno = next(parser.stream).lineno
                body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
                return nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

            def _mark(self, caller):
                return GEN_OPEN + caller() + GEN_CLOSE

        return GenerationExtension


@functools.lru_cache(maxsize=32)
def _compile(source: str):
    """A sandboxed Jinja template with the helpers Hugging Face templates expect and the `generation` tag."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols", _Generation.extension()],
    )
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, **_: json.dumps(
        x, indent=indent, ensure_ascii=ensure_ascii
    )
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    from jinja2 import TemplateSyntaxError

    try:
        return env.from_string(source)
    except TemplateSyntaxError as e:
        raise TemplateChoiceError(
            f"chat template: invalid Jinja at template line {e.lineno} ({e.message})"
        ) from None


def _render_source(source: str, **variables) -> str:
    from jinja2 import TemplateError

    template = _compile(source)
    try:
        return template.render(**variables)
    except TemplateError as e:
        raise TemplateRenderError(f"chat template refused the conversation: {e}") from None


def has_generation_tags(source: str) -> bool:
    return _GENERATION_TAG.search(source) is not None


def _dicts(messages: Sequence[Message | dict]) -> list[dict[str, str]]:
    return [
        m.to_dict() if isinstance(m, Message) else {"role": m["role"], "content": m["content"]}
        for m in messages
    ]


def _special_tokens(tokenizer: Any) -> dict[str, str]:
    return {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}


def _render_marked(
    tokenizer: Any, source: str, messages: list[dict], add_generation_prompt: bool
) -> tuple[str, list[tuple[int, int]]]:
    """(text, character spans of its `{% generation %}` blocks)."""
    raw = _render_source(
        source, messages=messages, add_generation_prompt=add_generation_prompt, **_special_tokens(tokenizer)
    )
    pieces, spans, length, start = [], [], 0, 0
    for piece in re.split(f"([{GEN_OPEN}{GEN_CLOSE}])", raw):
        if piece == GEN_OPEN:
            start = length
        elif piece == GEN_CLOSE:
            spans.append((start, length))
        else:
            pieces.append(piece)
            length += len(piece)
    return "".join(pieces), spans


def _render(tokenizer: Any, source: str, messages: list[dict], add_generation_prompt: bool) -> str:
    if GEN_OPEN not in source and not has_generation_tags(source):
        return _render_source(
            source,
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            **_special_tokens(tokenizer),
        )
    return _render_marked(tokenizer, source, messages, add_generation_prompt)[0]


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
    return _adds_bos(tokenizer, bos)


_ADDS_BOS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _adds_bos(tokenizer: Any, bos: int) -> bool:
    """Whether the tokenizer puts `bos` in front on its own: asked once per tokenizer (and BOS id), not once per
    conversation (a quarter of all tokenizer calls when a 25K-record set is tokenised)."""
    try:
        known = _ADDS_BOS.get(tokenizer)
    except TypeError:  # not weak-referenceable or hashable: ask every time
        return tokenizer("a")["input_ids"][:1] == [bos]
    state = (bos, getattr(tokenizer, "add_bos_token", None))  # asked again if either changes
    if known is None or known[0] != state:
        known = (state, tokenizer("a")["input_ids"][:1] == [bos])
        _ADDS_BOS[tokenizer] = known
    return known[1]


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


def encode_text(tokenizer: Any, text: str, *, counts: Counter | None = None) -> list[int]:
    """Plain text (no template) with the one-BOS rule, its end-of-text markers stripped or mapped."""
    text = clean_messages(tokenizer, [{"role": "assistant", "content": text}], counts)[0]["content"]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.bos_token_id, *ids] if _needs_bos(tokenizer, text) else list(ids)


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _common_suffix(a: str, b: str) -> int:
    return _common_prefix(a[::-1], b[::-1])


def _with_content(msgs: list[dict], i: int, content: str) -> list[dict]:
    return [*msgs[:i], {**msgs[i], "content": content}, *msgs[i + 1 :]]


def _content_region(
    tokenizer: Any, source: str, msgs: list[dict], i: int, text: str
) -> tuple[int, int] | None:
    """[a, b): the characters of `text` that message i's content determines (its rendered content, after whatever
    the template does to it), found where renderings with the two sentinel contents differ; None when the
    template does not render the content exactly once."""
    one, two = (_render(tokenizer, source, _with_content(msgs, i, x), False) for x in SENTINELS)
    head, tail = _common_prefix(one, two), _common_suffix(one, two)
    if one[head : len(one) - tail] != SENTINELS[0]:
        return None
    a = min(head, _common_prefix(text, one))
    b = len(text) - min(tail, _common_suffix(text, one))
    return a, max(a, b)


def _turn_end(tokenizer: Any, source: str, msgs: list[dict], i: int, rest: str) -> int:
    """How many characters of `rest` (the text after reply i's content) end that turn: the longest whole-word
    prefix of what the template renders after an assistant reply that ends a conversation ("<|im_end|>")."""
    upto = msgs[: i + 1]
    tail_of = lambda x: _render(tokenizer, source, _with_content(upto, i, x), False)  # noqa: E731
    one, two = tail_of(SENTINELS[0]), tail_of(SENTINELS[1])
    tail = one[len(one) - _common_suffix(one, two) :].rstrip()
    cuts = [k for k in range(1, len(tail)) if tail[k].isspace() and not tail[k - 1].isspace()] + [len(tail)]
    return max((k for k in cuts if rest.startswith(tail[:k])), default=0)


def _located_spans(tokenizer: Any, source: str, msgs: list[dict], text: str) -> list[tuple[int, int]]:
    """Rule 3 of the module docstring: every reply located by sentinel renderings, from the end of the generation
    prompt before it to the end of its end-of-turn marker. ValueError when a reply cannot be located."""
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        region = _content_region(tokenizer, source, msgs, i, text)
        start = end = 0
        if region is not None:
            a, b = region
            bare, prompted = (_render(tokenizer, source, msgs[:i], g) for g in (False, True))
            header = prompted[len(bare) :] if prompted.startswith(bare) else ""
            k = text.rfind(header, spans[-1][1] if spans else 0, a + len(header)) if header else -1
            start = k + len(header) if 0 <= k and k + len(header) <= a else a
            end = b + _turn_end(tokenizer, source, msgs, i, text[b:])
        if end <= start or (spans and start < spans[-1][1]) or not text[start:end].strip():
            raise ValueError(
                f"chat template: cannot tell which tokens of assistant turn {i} to train: the template renders "
                "earlier turns differently from how a shorter conversation renders them, and the reply could not "
                "be located in the text. Add {% generation %} ... {% endgeneration %} around each assistant reply "
                "in the template (template=path/to/file.jinja), or train on conversations that end at that turn"
            )
        spans.append((start, end))
    return spans


def reply_spans(
    tokenizer: Any, source: str, msgs: list[dict], add_generation_prompt: bool
) -> tuple[str, list[tuple[int, int]]]:
    """(rendered text, character span of every assistant reply to train), by the rules of the module docstring."""
    if not getattr(tokenizer, "is_fast", True):
        raise ValueError(
            f"{type(tokenizer).__name__} is a slow tokenizer: assistant masks need character offsets "
            "(use the model's fast tokenizer, tokenizer.json)"
        )
    if has_generation_tags(source):
        return _render_marked(tokenizer, source, msgs, add_generation_prompt)
    text = _render(tokenizer, source, msgs, add_generation_prompt)
    spans = _assistant_spans(tokenizer, source, msgs, text)
    return text, spans if spans is not None else _located_spans(tokenizer, source, msgs, text)


def encode_conversation(
    tokenizer: Any,
    messages: Sequence[Message | dict],
    template: str = "auto",
    *,
    counts: Counter | None = None,
) -> tuple[list[int], list[bool]]:
    """(ids, mask): mask is True on every assistant-reply token including its EOS / end-of-turn token."""
    msgs = clean_messages(tokenizer, _dicts(messages), counts)
    text, spans = reply_spans(tokenizer, get_template(template, tokenizer), msgs, False)
    return _encode_spans(tokenizer, text, spans)


def encode_prompt(
    tokenizer: Any,
    messages: Sequence[Message | dict],
    template: str = "auto",
    *,
    counts: Counter | None = None,
) -> list[int]:
    """Ids a generation starts from: the prompt and the generation prompt, with exactly one BOS.

    Equal to the first ids of `encode_conversation(prompt + [reply])` (the same cuts are made before earlier replies).
    """
    msgs = clean_messages(tokenizer, _dicts(messages), counts)
    text, spans = reply_spans(tokenizer, get_template(template, tokenizer), msgs, True)
    return _encode_spans(tokenizer, text, spans)[0]
