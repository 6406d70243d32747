"""Read training records from files or the Hub, and turn them into Conversations.

    for path, line, rec in read_records("a.jsonl,b.parquet"): ...
    convs = read_conversations("train.jsonl", format="auto", system_prompt="You are helpful.")

Sources: .jsonl, .json (a list, or {"data": [...]}), .parquet (pyarrow), .csv, a `datasets.save_to_disk` directory,
or a Hugging Face Hub dataset name (optionally `name:split`, default split train; `datasets` is imported only then).
Comma-separated sources are concatenated. `line` is 1-based: the file line for JSONL/CSV, the record number otherwise.

Formats (`auto` picks one per file from the first record's keys):
  messages           {"messages": [{"role", "content"}, ...]} (OpenAI) or {"conversations": [{"from", "value"}]}
                     (ShareGPT); an optional "system" string is put first
  alpaca             {"instruction", "input"?, "output", "system"?}; input is appended to the instruction
  prompt_completion  {"prompt", "completion"}: strings or message lists
  text               {"text"}: plain text trained on every token (meta {"format": "text"})
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from posttrain.data.schema import Conversation, DataError, Message, messages_from, where

Record = tuple[str, int, dict[str, Any]]


def _jsonl(path: Path) -> Iterator[Record]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{where(str(path), line_no)}: invalid JSON ({e.msg} at column {e.colno})"
                ) from None
            yield _check_object(rec, str(path), line_no)


def _json(path: Path) -> Iterator[Record]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # one object per line under a .json name
            yield from _jsonl(path)
            return
        raise DataError(f"{where(str(path), e.lineno)}: invalid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(
            f'{path}: expected a JSON list of records or {{"data": [...]}}, got {type(data).__name__}'
        )
    for i, rec in enumerate(data, 1):
        yield _check_object(rec, str(path), i)


def _parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    for i, rec in enumerate(pq.read_table(path).to_pylist(), 1):
        yield str(path), i, rec


def _csv(path: Path) -> Iterator[Record]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for rec in reader:
            yield str(path), reader.line_num, dict(rec)


def _datasets(name: str) -> Iterator[Record]:
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"{name}: not a file; reading Hub datasets needs `pip install datasets`") from e
    if Path(name).is_dir():
        ds = datasets.load_from_disk(name)
    else:
        repo, _, split = name.partition(":")
        ds = datasets.load_dataset(repo, split=split or "train")
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{name}: dataset has splits {sorted(ds)}; name one as NAME:SPLIT")
        ds = ds["train"]
    for i, rec in enumerate(ds, 1):
        yield name, i, dict(rec)


def _check_object(rec: Any, path: str, line: int) -> Record:
    if not isinstance(rec, dict):
        raise DataError(f"{where(path, line)}: expected a JSON object, got {type(rec).__name__}")
    return path, line, rec


FILE_READERS: dict[str, Callable[[Path], Iterator[Record]]] = {
    ".jsonl": _jsonl,
    ".json": _json,
    ".parquet": _parquet,
    ".csv": _csv,
}


def read_records(source: str) -> Iterator[Record]:
    """(path, 1-based line, record dict) for every record of every comma-separated source."""
    for part in (p.strip() for p in str(source).split(",")):
        if not part:
            continue
        path = Path(part).expanduser()
        if path.is_file():
            if path.suffix.lower() not in FILE_READERS:
                raise DataError(
                    f"{part}: unknown file type {path.suffix!r} (expected {', '.join(FILE_READERS)})"
                )
            yield from FILE_READERS[path.suffix.lower()](path)
        elif path.suffix.lower() in FILE_READERS:
            raise DataError(f"{part}: file not found")
        else:
            yield from _datasets(part)


# --------------------------------------------------------------------------------------------------------------
# formats


def _field(rec: dict, key: str, path: str, line: int) -> Any:
    if key not in rec or rec[key] is None:
        raise DataError(f"{where(path, line, key)}: missing (record has {sorted(rec)})")
    return rec[key]


def _string(rec: dict, key: str, path: str, line: int) -> str:
    value = _field(rec, key, path, line)
    if not isinstance(value, str):
        raise DataError(f"{where(path, line, key)}: expected a string, got {type(value).__name__}")
    return value


def _message_list(value: Any, path: str, line: int, fld: str) -> Any:
    """CSV cells hold message lists as JSON text."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(f"{where(path, line, fld)}: invalid JSON ({e.msg})") from None
    return value


def _messages(rec: dict, path: str, line: int) -> list[Message]:
    key = "conversations" if "conversations" in rec and "messages" not in rec else "messages"
    msgs = messages_from(_message_list(_field(rec, key, path, line), path, line, key), path, line, key)
    if isinstance(rec.get("system"), str) and rec["system"] and (not msgs or msgs[0].role != "system"):
        msgs.insert(0, Message("system", rec["system"]))
    return msgs


def _alpaca(rec: dict, path: str, line: int) -> list[Message]:
    user = _string(rec, "instruction", path, line)
    extra = rec.get("input")
    if extra is not None and not isinstance(extra, str):
        raise DataError(f"{where(path, line, 'input')}: expected a string, got {type(extra).__name__}")
    if extra:
        user = f"{user}\n\n{extra}"
    msgs = [Message("user", user), Message("assistant", _string(rec, "output", path, line))]
    if isinstance(rec.get("system"), str) and rec["system"]:
        msgs.insert(0, Message("system", rec["system"]))
    return msgs


def _prompt_completion(rec: dict, path: str, line: int) -> list[Message]:
    prompt = messages_from(
        _message_list(_field(rec, "prompt", path, line), path, line, "prompt"), path, line, "prompt"
    )
    completion = _message_list(_field(rec, "completion", path, line), path, line, "completion")
    if isinstance(completion, str):
        return [*prompt, Message("assistant", completion)]
    return [*prompt, *messages_from(completion, path, line, "completion")]


def _text(rec: dict, path: str, line: int) -> list[Message]:
    return [Message("assistant", _string(rec, "text", path, line))]


FORMATS: dict[str, Callable[[dict, str, int], list[Message]]] = {
    "messages": _messages,
    "alpaca": _alpaca,
    "prompt_completion": _prompt_completion,
    "text": _text,
}
"""Record -> messages, one function per format."""


def detect_format(rec: dict, path: str, line: int) -> str:
    """The format a record's keys say it is in."""
    keys = set(rec)
    if keys & {"messages", "conversations"}:
        return "messages"
    if "instruction" in keys:
        return "alpaca"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if "text" in keys:
        return "text"
    raise DataError(
        f"{where(path, line)}: cannot tell the format from keys {sorted(keys)}; expected messages | "
        f"conversations | instruction+output | prompt+completion | text"
    )


def to_conversation(
    rec: dict, fmt: str, path: str, line: int, system_prompt: str | None = None
) -> Conversation:
    """One record in format `fmt` as a trainable Conversation (ends with an assistant turn)."""
    msgs = FORMATS[fmt](rec, path, line)
    meta = dict(rec["meta"]) if isinstance(rec.get("meta"), dict) else {}
    if fmt == "text":
        return Conversation(msgs, {**meta, "format": "text"})
    if not msgs or msgs[-1].role != "assistant":
        last = msgs[-1].role if msgs else "none"
        raise DataError(
            f"{where(path, line)}: the conversation must end with an assistant turn to be trainable "
            f"(last role: {last})"
        )
    if system_prompt and msgs[0].role != "system":
        msgs.insert(0, Message("system", system_prompt))
    return Conversation(msgs, meta)


def read_conversations(
    source: str, format: str = "auto", system_prompt: str | None = None
) -> list[Conversation]:
    """Every record of `source` as a Conversation; `auto` detects the format per file from its first record."""
    if format != "auto" and format not in FORMATS:
        raise DataError(f"unknown data format {format!r}: expected auto | {' | '.join(FORMATS)}")
    out, fmt_of = [], {}
    for path, line, rec in read_records(source):
        if format == "auto" and path not in fmt_of:
            fmt_of[path] = detect_format(rec, path, line)
        out.append(to_conversation(rec, fmt_of.get(path, format), path, line, system_prompt))
    if not out:
        raise DataError(f"{source}: no records")
    return out
