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

Every problem is a DataError naming file, line and field: bytes that are not UTF-8 (text is decoded line by line),
invalid JSON, a record that is not an object, missing or wrongly typed fields, an empty prompt or reply, an empty
file; a directory or a missing path given as a file is named as such, never looked up on the Hub. pyarrow and
datasets are optional: without them, a .parquet file or a Hub name says which extra to install.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from posttrain.data.schema import (
    Conversation,
    DataError,
    Message,
    messages_from,
    require_prompt,
    where,
)
from posttrain.errors import require

Record = tuple[str, int, dict[str, Any]]

DATA_EXTRA = "data"
"""The pip extra that installs pyarrow and datasets (`pip install 'posttrain[data]'`)."""


def _not_utf8(path: Path | str, line: int, error: UnicodeDecodeError, column: int | None = None) -> DataError:
    at = f" at column {column}" if column is not None else ""
    return DataError(
        f"{where(str(path), line)}: not UTF-8 text (byte 0x{error.object[error.start]:02x}{at}); "
        "re-save the file as UTF-8"
    )


def read_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without its newline) of a UTF-8 text file, decoded line by line so that a bad
    byte is a DataError naming its line; a leading byte-order mark is dropped."""
    path = Path(path)
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(path, line_no, e, e.start + 1) from None
            yield line_no, text.rstrip("\r\n")


def read_text(path: str | Path) -> str:
    """A whole UTF-8 text file; a bad byte is a DataError naming its line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        raise _not_utf8(path, data.count(b"\n", 0, e.start) + 1, e, e.start - line_start + 1) from None


def read_jsonl(path: str | Path) -> Iterator[Record]:
    """(path, line, record) for every non-blank line of a JSONL file; a line that is not UTF-8, not JSON, or not an
    object is a DataError naming file and line."""
    for line_no, line in read_lines(path):
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
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # one object per line under a .json name
            yield from read_jsonl(path)
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
    pq = require("pyarrow.parquet", DATA_EXTRA, feature=f"{path}: reading .parquet files")
    try:
        rows = pq.read_table(path).to_pylist()
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a readable parquet file ({_first_line(e)})") from None
    for i, rec in enumerate(rows, 1):
        yield str(path), i, rec


def _csv(path: Path) -> Iterator[Record]:
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    try:
        for rec in reader:
            yield str(path), reader.line_num, dict(rec)
    except csv.Error as e:
        raise DataError(f"{where(str(path), reader.line_num)}: invalid CSV ({e})") from None


def _is_saved_dataset(path: Path) -> bool:
    return any((path / name).is_file() for name in ("dataset_info.json", "dataset_dict.json", "state.json"))


def _datasets(name: str) -> Iterator[Record]:
    datasets = require("datasets", DATA_EXTRA, feature=f"{name}: reading a Hub dataset or a saved dataset")
    try:
        if Path(name).is_dir():
            ds = datasets.load_from_disk(name)
        else:
            repo, _, split = name.partition(":")
            ds = datasets.load_dataset(repo, split=split or "train")
    except (OSError, ValueError) as e:  # not found, offline, unknown split, ...
        raise DataError(
            f"{name}: not a data file, a `datasets.save_to_disk` directory or a Hub dataset ({_first_line(e)})"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{name}: dataset has splits {sorted(ds)}; name one as NAME:SPLIT")
        ds = ds["train"]
    for i, rec in enumerate(ds, 1):
        yield name, i, dict(rec)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def _check_object(rec: Any, path: str, line: int) -> Record:
    if not isinstance(rec, dict):
        raise DataError(f"{where(path, line)}: expected a JSON object, got {type(rec).__name__}")
    return path, line, rec


FILE_READERS: dict[str, Callable[[Path], Iterator[Record]]] = {
    ".jsonl": read_jsonl,
    ".json": _json,
    ".parquet": _parquet,
    ".csv": _csv,
}


def _looks_like_path(part: str) -> bool:
    """A name the user meant as a file, not a Hub dataset: a known suffix, or an explicit path."""
    return Path(part).suffix.lower() in FILE_READERS or part.startswith(("/", "./", "../", "~", "."))


def read_records(source: str) -> Iterator[Record]:
    """(path, 1-based line, record dict) for every record of every comma-separated source. A path that exists is
    read as a file (or a saved dataset directory); a missing one with a known suffix or an explicit path prefix is
    a DataError; anything else is a Hub dataset name."""
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
        elif path.is_dir() and not _is_saved_dataset(path):
            raise DataError(
                f"{part}: is a directory, not a data file (expected {', '.join(FILE_READERS)}, or a "
                "`datasets.save_to_disk` directory)"
            )
        elif not path.exists() and _looks_like_path(part):
            raise DataError(f"{part}: file not found")
        else:
            yield from _datasets(part)


def read_nonempty(source: str) -> list[Record]:
    """Every record of `source`; no records at all (an empty file) is a DataError."""
    records = list(read_records(source))
    if not records:
        raise DataError(f"{source}: no records (the file is empty)")
    return records


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


def _reply(msgs: list[Message], path: str, line: int, fld: str) -> list[Message]:
    """`msgs`, refused when the reply it ends with (what SFT trains on) is blank."""
    if msgs and msgs[-1].role == "assistant" and not msgs[-1].content.strip():
        raise DataError(f"{where(path, line, fld)}: the reply is empty (nothing to train on)")
    return msgs


def _messages(rec: dict, path: str, line: int) -> list[Message]:
    key = "conversations" if "conversations" in rec and "messages" not in rec else "messages"
    value = _message_list(_field(rec, key, path, line), path, line, key)
    if not isinstance(
        value, list
    ):  # (messages_from reads a plain string as one user turn: not a conversation)
        raise DataError(f"{where(path, line, key)}: expected a list of messages, got {type(value).__name__}")
    msgs = messages_from(value, path, line, key)
    _reply(msgs, path, line, f"{key}[{len(msgs) - 1}].content")
    if isinstance(rec.get("system"), str) and rec["system"] and (not msgs or msgs[0].role != "system"):
        msgs.insert(0, Message("system", rec["system"]))
    return msgs


def _alpaca(rec: dict, path: str, line: int) -> list[Message]:
    user = _string(rec, "instruction", path, line)
    if not user.strip():
        raise DataError(f"{where(path, line, 'instruction')}: empty prompt")
    extra = rec.get("input")
    if extra is not None and not isinstance(extra, str):
        raise DataError(f"{where(path, line, 'input')}: expected a string, got {type(extra).__name__}")
    if extra:
        user = f"{user}\n\n{extra}"
    msgs = _reply(
        [Message("user", user), Message("assistant", _string(rec, "output", path, line))],
        path,
        line,
        "output",
    )
    if isinstance(rec.get("system"), str) and rec["system"]:
        msgs.insert(0, Message("system", rec["system"]))
    return msgs


def _prompt_completion(rec: dict, path: str, line: int) -> list[Message]:
    prompt = messages_from(
        _message_list(_field(rec, "prompt", path, line), path, line, "prompt"), path, line, "prompt"
    )
    require_prompt(prompt, path, line, "prompt")
    completion = _message_list(_field(rec, "completion", path, line), path, line, "completion")
    if isinstance(completion, str):
        return _reply([*prompt, Message("assistant", completion)], path, line, "completion")
    return _reply([*prompt, *messages_from(completion, path, line, "completion")], path, line, "completion")


def _text(rec: dict, path: str, line: int) -> list[Message]:
    return _reply([Message("assistant", _string(rec, "text", path, line))], path, line, "text")


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
