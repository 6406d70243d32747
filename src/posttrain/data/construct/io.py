"""Records in and out for construction commands: every output gets its stats summary written beside it.

Reading goes through `posttrain.data.readers` (one reader: per-line UTF-8 decoding, file:line errors). Writing is
atomic and ordered (`write_with_stats`): every record goes to a hidden temporary file `.OUT.tmp-PID`; once all are
written the old OUT.stats.json is removed and the temporary file is fsync'd and renamed over OUT; then the new stats
file is written the same way. What a command killed at any point leaves:
  * before the records are all written (the long part): the old OUT and OUT.stats.json, untouched (plus, after a
    SIGKILL, the hidden temporary file; an exception or Ctrl-C removes it);
  * during the fsync and the two renames: OUT (old, then new) with no stats file beside it;
  * after: the new OUT and its stats.
Never a partial OUT, and never a stats file that describes another OUT.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from posttrain.atomic import atomic_open, atomic_write_json
from posttrain.data.messages import record_messages
from posttrain.data.readers import read_jsonl, read_nonempty, read_records
from posttrain.data.schema import DataError, messages_from, where

__all__ = [
    "read_jsonl",
    "read_rows",
    "read_checked",
    "read_conversation_records",
    "write_jsonl",
    "write_stats",
]


def read_rows(source: str | Path) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Records of a .jsonl file, or of any source `posttrain.data.readers.read_records` knows."""
    yield from read_records(str(source))


def _meta(rec: dict[str, Any], path: str, line: int) -> None:
    if "meta" in rec and rec["meta"] is not None and not isinstance(rec["meta"], dict):
        raise DataError(f"{where(path, line, 'meta')}: expected an object, got {type(rec['meta']).__name__}")


def read_checked(source: str | Path) -> list[dict[str, Any]]:
    """Every record of `source`, each checked to be one posttrain reads (a conversation in any format, a preference
    pair, a ranking) with an object as `meta`; an empty source is an error."""
    out = []
    for path, line, rec in read_nonempty(str(source)):
        record_messages(rec, path, line)
        _meta(rec, path, line)
        out.append(rec)
    return out


def read_conversation_records(source: str | Path) -> list[dict[str, Any]]:
    """Every record of `source`, each a `{"messages": [{role, content}, ...]}` conversation (what the construction
    commands write), its messages checked and normalised to {role, content}; an empty source is an error."""
    out = []
    for path, line, rec in read_nonempty(str(source)):
        if "messages" not in rec:
            raise DataError(
                f'{where(path, line, "messages")}: missing (expected {{"messages": [...]}} conversations; '
                "convert other formats with `posttrain data from-chat`)"
            )
        if not isinstance(rec["messages"], list):
            raise DataError(
                f"{where(path, line, 'messages')}: expected a list of messages, got {type(rec['messages']).__name__}"
            )
        msgs = messages_from(rec["messages"], path, line, "messages")
        _meta(rec, path, line)
        out.append({**rec, "messages": [m.to_dict() for m in msgs]})  # roles normalised (human -> user, ...)
    return out


def stats_path(out: str | Path) -> Path:
    """`data/x.jsonl` -> `data/x.stats.json`."""
    out = Path(out)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(stem + ".stats.json")


def write_jsonl(records: Iterable[dict[str, Any]], out: str | Path, before_rename=None) -> int:
    """Write records one per line (UTF-8, not ASCII-escaped) atomically; returns the count. `before_rename` is
    called once every record is written, just before the new file replaces the old one."""
    n = 0
    with atomic_open(out) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
        if before_rename is not None:
            before_rename()
    return n


def write_stats(stats: dict[str, Any], out: str | Path) -> Path:
    """OUT.stats.json, atomically."""
    path = stats_path(out)
    atomic_write_json(path, stats)
    return path


def write_with_stats(records: list[dict[str, Any]], stats: dict[str, Any], out: str | Path) -> Path:
    """OUT then OUT.stats.json, in the order of the module docstring; returns the stats path."""
    path = stats_path(out)
    write_jsonl(records, out, before_rename=lambda: path.unlink(missing_ok=True))
    atomic_write_json(path, stats)
    return path
