"""One reader for "a record -> the conversation a model is asked to continue": RL prompts (`posttrain ppo`),
evaluation rows and the labelling app all go through `prompt_messages`, so they accept the same files.

Accepted, the first form a record has wins:
    {"chosen": ..., "rejected": ...}, {"prompt", "responses", "ranking"}  preference pairs, hh-rlhf transcripts and
                                               rankings: their shared prompt
    {"messages": [...]} / {"conversations": [...]}  the conversation, with its trailing assistant replies dropped
    {"prompt": "text" | [messages]}
    {"instruction": "...", "input": "..."}    alpaca / Self-Instruct: the instruction, then the input after a blank
                                               line when there is one

    msgs, replies = prompt_messages(rec, path, line)   # replies: the dropped trailing assistant texts
"""

from __future__ import annotations

from typing import Any

from posttrain.data.schema import DataError, Message, messages_from, require_prompt, where

PROMPT_FORMS = ("chosen", "ranking", "messages", "conversations", "prompt", "instruction")
"""Record keys that make a prompt, in the order they are looked for."""


def _instruction(rec: dict[str, Any], path: str, line: int) -> list[Message]:
    instruction, extra = rec["instruction"], rec.get("input")
    if not isinstance(instruction, str):
        raise DataError(
            f"{where(path, line, 'instruction')}: expected a string, got {type(instruction).__name__}"
        )
    if extra is not None and not isinstance(extra, str):
        raise DataError(f"{where(path, line, 'input')}: expected a string, got {type(extra).__name__}")
    return [Message("user", f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction)]


def prompt_messages(
    rec: dict[str, Any], path: str = "<data>", line: int = 0, system_prompt: str | None = None
) -> tuple[list[Message], list[str]]:
    """(prompt messages, the assistant replies dropped from the end of a conversation, oldest first). A record with
    no prompt form, or whose prompt is empty or ends with an assistant turn, is a DataError naming file and line."""
    key = next((k for k in PROMPT_FORMS if k in rec), None)
    if key is None:
        raise DataError(
            f"{where(path, line, 'prompt')}: missing (a prompt row needs one of {', '.join(PROMPT_FORMS)})"
        )
    replies: list[str] = []
    if key in ("chosen", "ranking"):
        from posttrain.data.preference import parse_record

        msgs = list(parse_record(rec, "auto", path, line).prompt)
    elif key == "instruction":
        msgs = _instruction(rec, path, line)
    else:
        msgs = messages_from(rec[key], path, line, key)
        while key != "prompt" and msgs and msgs[-1].role == "assistant":
            replies.insert(0, msgs.pop().content)
    require_prompt(msgs, path, line, key)
    if msgs[-1].role == "assistant":
        raise DataError(f"{where(path, line, key)}: the prompt must end with a user (or system) message")
    if system_prompt and msgs[0].role != "system":
        msgs = [Message("system", system_prompt), *msgs]
    return msgs, replies
