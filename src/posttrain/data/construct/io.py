"""JSONL in and out for construction commands: every output gets its stats summary written beside it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from posttrain.data.schema import DataError, where


def read_jsonl(path: str | Path) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Yield (path, line_no, record) for each non-blank line; a bad line raises DataError naming file:line."""
    path = str(path)
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                raise DataError(f"{where(path, n)}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where(path, n)}: expected a JSON object, got {type(obj).__name__}")
            yield path, n, obj


def read_rows(source: str | Path) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Records of a .jsonl file, or of any format `posttrain.data.readers.read_records` knows (json, csv, parquet)."""
    if str(source).endswith(".jsonl"):
        yield from read_jsonl(source)
        return
    from posttrain.data.readers import read_records

    yield from read_records(str(source))


def stats_path(out: str | Path) -> Path:
    """`data/x.jsonl` -> `data/x.stats.json`."""
    out = Path(out)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(stem + ".stats.json")


def write_jsonl(records: Iterable[dict[str, Any]], out: str | Path) -> int:
    """Write records one per line (UTF-8, not ASCII-escaped); returns the count."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(out, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_stats(stats: dict[str, Any], out: str | Path) -> Path:
    path = stats_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
