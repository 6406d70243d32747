"""Daily chat data -> whole multi-turn conversations (survey Section 5.1.1, "formatting daily chat data").

Formats, per record (`auto` decides per record by its keys):
  sharegpt  {"conversations": [{"from": "human"|"gpt"|..., "value": ...}, ...]}
  messages  {"messages": [{"role": ..., "content": ...}, ...]}  (OpenAI)
  hh        {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ..."} (hh-rlhf; the chosen transcript of a preference pair),
            or {"text"|"transcript": "..."}

Cleaning, each action counted: roles normalised, contents stripped (and the end-of-text markers they end with,
`posttrain.data.markers`), empty turns dropped, consecutive same-role turns merged (joined by a blank line),
leading assistant turns dropped, user/system turns after the last assistant reply dropped (so an empty last reply,
as hh-rlhf has, takes the unanswered question before it along), conversations without an assistant turn dropped,
exact duplicates (on lowercased, whitespace-collapsed text with roles) dropped. Every conversation out ends with an
assistant reply with text, which is what SFT trains.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from posttrain.data.construct.io import read_rows
from posttrain.data.markers import strip_trailing
from posttrain.data.schema import Conversation, DataError, Message, messages_from, where

_HH_MARKER = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


def parse_hh(
    text: str, path: str | None = None, line: int | None = None, fld: str = "chosen"
) -> list[Message]:
    """Split an hh-rlhf transcript on its `\\n\\nHuman:` / `\\n\\nAssistant:` markers (one turn per marker)."""
    if not isinstance(text, str):
        raise DataError(f"{where(path, line, fld)}: expected a transcript string, got {type(text).__name__}")
    parts = _HH_MARKER.split(text if text.startswith("\n\n") else "\n\n" + text)
    if len(parts) < 3:
        raise DataError(f"{where(path, line, fld)}: no '\\n\\nHuman:' / '\\n\\nAssistant:' turns found")
    if parts[0].strip():
        raise DataError(f"{where(path, line, fld)}: text before the first Human/Assistant marker")
    return [Message(_HH_ROLE[role], body) for role, body in zip(parts[1::2], parts[2::2])]


def _sharegpt(rec, path, line):
    return messages_from(rec.get("conversations"), path, line, "conversations")


def _messages(rec, path, line):
    return messages_from(rec.get("messages"), path, line, "messages")


def _hh(rec, path, line):
    key = next((k for k in ("chosen", "text", "transcript") if k in rec), "chosen")
    return parse_hh(rec.get(key), path, line, key)


PARSERS = {"sharegpt": _sharegpt, "messages": _messages, "hh": _hh}


def detect_format(rec: dict[str, Any], path: str | None = None, line: int | None = None) -> str:
    if "conversations" in rec:
        return "sharegpt"
    if "messages" in rec:
        return "messages"
    if any(isinstance(rec.get(k), str) for k in ("chosen", "text", "transcript")):
        return "hh"
    raise DataError(
        f"{where(path, line)}: cannot tell the chat format (expected a conversations, messages, "
        f"chosen or text field; got {sorted(rec)})"
    )


def clean_turns(messages: list[Message], counts: Counter) -> list[Message]:
    """Strip (also trailing end-of-text markers), drop empty turns, merge consecutive same-role turns, drop leading
    assistant turns and the turns after the last assistant reply."""
    out: list[Message] = []
    for m in messages:
        content, markers = strip_trailing(m.content.strip())
        content = content.strip()
        if markers:
            counts["end_markers_stripped"] += markers
        if not content:
            counts["empty_turns_dropped"] += 1
        elif out and out[-1].role == m.role:
            out[-1] = Message(m.role, out[-1].content + "\n\n" + content)
            counts["same_role_turns_merged"] += 1
        else:
            out.append(Message(m.role, content))
    while out and out[0].role == "assistant":  # a reply to nothing
        counts["leading_assistant_turns_dropped"] += 1
        out.pop(0)
    answered = any(m.role == "assistant" for m in out)
    while answered and out[-1].role != "assistant":  # a question nobody answered: nothing to train
        counts["trailing_turns_dropped"] += 1
        out.pop()
    return out


def _key(messages: list[Message]) -> str:
    text = "\x00".join(f"{m.role}\x01{' '.join(m.content.lower().split())}" for m in messages)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def convert_chat(
    records: Iterable[tuple[str, int, dict[str, Any]]], fmt: str = "auto", dedup: bool = True
) -> tuple[list[Conversation], dict[str, int]]:
    """Parse, clean and deduplicate chat records; returns conversations and counts of every action."""
    if fmt != "auto" and fmt not in PARSERS:
        raise ValueError(f"format must be auto | {' | '.join(PARSERS)}, got {fmt!r}")
    counts: Counter = Counter()
    seen: set[str] = set()
    out = []
    for path, line, rec in records:
        counts["records_in"] += 1
        kind = detect_format(rec, path, line) if fmt == "auto" else fmt
        raw = PARSERS[kind](rec, path, line)
        counts["turns_in"] += len(raw)
        msgs = clean_turns(raw, counts)
        if not any(m.role == "assistant" for m in msgs):
            counts["no_assistant_dropped"] += 1
            continue
        key = _key(msgs)
        if dedup and key in seen:
            counts["duplicates_dropped"] += 1
            continue
        seen.add(key)
        counts["turns_out"] += len(msgs)
        meta = {"source": rec.get("source", kind) if isinstance(rec.get("source"), str) else kind}
        out.append(Conversation(msgs, meta))
    counts["conversations_out"] = len(out)
    return out, dict(sorted(counts.items()))


def convert_chat_file(path: str, fmt: str = "auto", dedup: bool = True):
    return convert_chat(read_rows(path), fmt, dedup)
