"""Metrics to `metrics.jsonl` (one JSON object per logged step); progress lines are `posttrain.progress`.

On resume the file is cut back to the steps the checkpoint covers, so a resumed run's file reads exactly like an
uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from posttrain.atomic import atomic_write_text
from posttrain.errors import UserError


def _clean(value: Any) -> Any:
    """JSON-safe scalars: tensors -> float, non-finite floats -> their string form."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    """Append-only JSONL writer; `keep_up_to` truncates rows with a step beyond it (resume). `kept` holds the
    rows kept. A torn last line (a run killed mid-write) is dropped with a message; a bad line elsewhere is an
    error naming the file and line."""

    def __init__(self, path: str | Path, keep_up_to: int = 0, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.kept: list[dict[str, Any]] = []
        if not enabled:
            return
        if self.path.exists():
            self.kept = [r for r in read_metrics(self.path, torn_ok=True) if r.get("step", 0) <= keep_up_to]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.kept))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a")

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()


def read_metrics(path: str | Path, torn_ok: bool = False) -> list[dict[str, Any]]:
    """All rows of a metrics.jsonl file. With `torn_ok` an unterminated, unparsable last line is dropped."""
    path = Path(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if torn_ok and i == len(lines):  # no newline after it: the write was cut off
                print(f"{path}:{i}: torn last line dropped", file=sys.stderr, flush=True)
                continue
            raise UserError(f"{path}:{i}: not a metrics row ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{i}: not a metrics row (a JSON {type(row).__name__})")
        rows.append(row)
    return rows
