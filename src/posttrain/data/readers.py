"""Read training records from files or the Hub, and turn them into Conversations.

    for path, line, rec in read_records("a.jsonl,b.parquet"): ...
    convs = read_conversations("train.jsonl", format="auto", system_prompt="You are helpful.")

Sources: .jsonl (or one JSON array under that name), .json (a list, {"data": [...]}, or JSON lines), .parquet
(pyarrow), .csv, a `datasets.save_to_disk` directory, or a Hugging Face Hub dataset name (optionally `name:split`,
default split train; `datasets` is imported only then). Comma-separated sources are concatenated. `line` is 1-based:
the file line for JSONL/CSV, the record number otherwise.

Formats (`auto` picks one per file from the first record's keys):
  messages           {"messages": [{"role", "content"}, ...]} (OpenAI) or {"conversations": [{"from", "value"}]}
                     (ShareGPT); an optional "system" string is put first
  alpaca             {"instruction", "input"?, "output", "system"?}; input is appended to the instruction. A
                     Self-Instruct seed task {"instruction", "instances": [{"input", "output"}, ...]} is one
                     alpaca record per instance
  prompt_completion  {"prompt", "completion"}: strings or message lists
  text               {"text"}: plain text trained on every token (meta {"format": "text"})

Every problem is a DataError naming file, line and field: bytes that are not UTF-8 (text is decoded line by line),
invalid JSON, a record that is not an object, missing or wrongly typed fields, an empty file; a directory or a
missing path given as a file is named as such, never looked up on the Hub. What is well-formed but cannot be
trained is cut or dropped and counted instead (`trainable_turns`: blank replies and unanswered turns at the end, a
record without a reply or with a blank message); `read_conversations` prints the counts on stderr. pyarrow and
datasets are optional: without them, a .parquet file or a Hub name says which extra to install.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from posttrain.data.markers import strip_trailing
from posttrain.data.schema import Conversation, DataError, Message, messages_from, where
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


def _jsonl_lines(path: str | Path) -> Iterator[Record]:
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


def _starts_with_array(path: str | Path) -> bool:
    """Whether the file's first non-blank line opens a JSON array (no JSONL record can: each is an object)."""
    for _, text in read_lines(path):
        if text.strip():
            return text.lstrip().startswith("[")
    return False


def read_jsonl(path: str | Path) -> Iterator[Record]:
    """(path, line, record) for every non-blank line of a JSONL file; a line that is not UTF-8, not JSON, or not an
    object is a DataError naming file and line. A file that holds one JSON array instead (a .json file saved under
    a .jsonl name) is read as `.json` files are, line numbers being record numbers."""
    yield from (_json(Path(path)) if _starts_with_array(path) else _jsonl_lines(path))


def _json(path: Path) -> Iterator[Record]:
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # one object per line under a .json name
            yield from _jsonl_lines(path)
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


def expand_instances(rec: dict, path: str, line: int) -> list[dict]:
    """A Self-Instruct seed task `{instruction, instances: [{input, output}, ...], ...}` as one record per instance
    (its other fields copied into each); any other record as it is."""
    if "instances" not in rec:
        return [rec]
    instances = rec["instances"]
    if not isinstance(instances, list):
        raise DataError(f"{where(path, line, 'instances')}: expected a list of {{input, output}} objects")
    base = {k: v for k, v in rec.items() if k != "instances"}
    out = []
    for i, inst in enumerate(instances):
        ok = isinstance(inst, dict) and isinstance(inst.get("output"), str)
        if not ok or not isinstance(inst.get("input", ""), str):
            raise DataError(f"{where(path, line, f'instances[{i}]')}: expected {{input: str, output: str}}")
        out.append({**base, **inst})
    return out


def _messages(rec: dict, path: str, line: int) -> list[Message]:
    key = "conversations" if "conversations" in rec and "messages" not in rec else "messages"
    value = _message_list(_field(rec, key, path, line), path, line, key)
    # (messages_from reads a plain string as one user turn: not a conversation)
    if not isinstance(value, list):
        raise DataError(f"{where(path, line, key)}: expected a list of messages, got {type(value).__name__}")
    msgs = messages_from(value, path, line, key)
    if isinstance(rec.get("system"), str) and rec["system"] and (not msgs or msgs[0].role != "system"):
        msgs.insert(0, Message("system", rec["system"]))
    return msgs


def _alpaca(rec: dict, path: str, line: int) -> list[Message]:
    instruction = _string(rec, "instruction", path, line)
    extra = rec.get("input")
    if extra is not None and not isinstance(extra, str):
        raise DataError(f"{where(path, line, 'input')}: expected a string, got {type(extra).__name__}")
    user = "\n\n".join(t for t in (instruction, extra) if t and t.strip())
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
"""Record -> messages, one function per format; fields are checked for type, not for being trainable."""


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


# --------------------------------------------------------------------------------------------------------------
# what can be trained


def _blank(text: str) -> bool:
    """No text once trailing end-of-text markers are set aside (`posttrain.data.markers`)."""
    return not strip_trailing(text)[0].strip()


def trainable_turns(msgs: list[Message]) -> tuple[list[Message] | None, list[str]]:
    """(the turns SFT can train on, or None when there are none; what was cut or dropped, one reason each). Blank
    replies and user/system turns after the last reply are cut off, blank system messages left out; a record left
    without a reply with text, or with a blank user or assistant message before it, is dropped (removing that
    message would join two turns of one role; `posttrain data from-chat` merges them)."""
    msgs, reasons = list(msgs), []
    while msgs and (msgs[-1].role != "assistant" or _blank(msgs[-1].content)):
        blank_reply = msgs.pop().role == "assistant"
        reasons.append("empty_replies_dropped" if blank_reply else "trailing_turns_dropped")
    if not msgs:
        return None, [*reasons, "dropped_no_reply"]
    if any(_blank(m.content) for m in msgs if m.role != "system"):
        return None, [*reasons, "dropped_empty_message"]
    kept = [m for m in msgs if m.role != "system" or not _blank(m.content)]
    return kept, reasons + ["empty_system_dropped"] * (len(msgs) - len(kept))


def to_conversation(
    rec: dict, fmt: str, path: str, line: int, system_prompt: str | None = None
) -> tuple[Conversation | None, list[str]]:
    """One record in format `fmt` as a trainable Conversation (it ends with a reply with text), or None when nothing
    in it can be trained; and the reasons of `trainable_turns`."""
    msgs, reasons = trainable_turns(FORMATS[fmt](rec, path, line))
    if msgs is None:
        return None, reasons
    meta = dict(rec["meta"]) if isinstance(rec.get("meta"), dict) else {}
    if fmt == "text":
        return Conversation(msgs, {**meta, "format": "text"}), reasons
    if system_prompt and msgs[0].role != "system":
        msgs.insert(0, Message("system", system_prompt))
    return Conversation(msgs, meta), reasons


def load_conversations(
    source: str, format: str = "auto", system_prompt: str | None = None
) -> tuple[list[Conversation], dict[str, int], dict[str, str]]:
    """(conversations, counts, where each reason counted first occurred): every record of `source` (of a
    Self-Instruct seed task, each instance) as a Conversation; what cannot be trained is dropped and counted. `auto`
    detects the format per file from its first record. No records, or none trainable, is a DataError."""
    if format != "auto" and format not in FORMATS:
        raise DataError(f"unknown data format {format!r}: expected auto | {' | '.join(FORMATS)}")
    out, fmt_of, counts, first = [], {}, Counter(), {}
    for path, line, raw in read_records(source):
        counts["records_in"] += 1
        records = expand_instances(raw, path, line)
        results = [(None, ["dropped_no_reply"])] if not records else []
        for rec in records:
            if format == "auto" and path not in fmt_of:
                fmt_of[path] = detect_format(rec, path, line)
            results.append(to_conversation(rec, fmt_of.get(path, format), path, line, system_prompt))
        for conv, reasons in results:
            out += [conv] if conv is not None else []
            counts.update(reasons)
            first.update({r: where(path, line) for r in reasons if r not in first})
    counts["conversations_out"] = len(out)
    if not counts["records_in"]:
        raise DataError(f"{source}: no records")
    if not out:
        raise DataError(f"{source}: nothing to train on ({summary(counts, first)})")
    return out, dict(counts), first


def summary(counts: dict[str, int], first: dict[str, str]) -> str:
    """'50 records -> 48 conversations; dropped_no_reply 2 (first at a.jsonl:7), ...'."""
    parts = [f"{k} {n} (first at {first[k]})" for k, n in sorted(counts.items()) if k in first and n]
    head = f"{counts.get('records_in', 0)} records -> {counts.get('conversations_out', 0)} conversations"
    return "; ".join([head, *parts])


def read_conversations(
    source: str, format: str = "auto", system_prompt: str | None = None
) -> list[Conversation]:
    """`load_conversations`, printing one line on stderr when anything was cut or dropped."""
    convs, counts, first = load_conversations(source, format, system_prompt)
    if first:
        print(f"data: {source}: {summary(counts, first)}", file=sys.stderr, flush=True)
    return convs
