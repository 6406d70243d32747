"""Evaluation inputs: rows of a prompt, a reference answer and a task name, from the formats people already have.

    rows = read_eval_rows("heldout.jsonl")           # EvalRow(prompt, references, task, prediction, meta)

One JSON object per record, any of:

    {"messages": [..., {"role": "assistant", "content": "ref"}], "meta": {"task": "add"}}   # last reply = reference
    {"prompt": "2+3?", "reference": "5"}             # also `instruction` (+ `input`), `answer`, `output`, `completion`
    {"instruction": "...", "instances": [{"input": "...", "output": "..."}], "name": "task"}  # Self-Instruct seeds
    {"prompt": "...", "reference": ["5", "five"]}    # several acceptable answers: the best match counts
    {"prompt": "...", "reference": "5", "prediction": "5"}   # a predictions file: scored without a model
    {"prompt": ..., "chosen": ..., "rejected": ...}  # preference pairs, hh-rlhf transcripts, rankings: the prompt,
                                                     # with the preferred reply as the reference

Records come from `posttrain.data.readers.read_records` (json, jsonl, parquet, csv, Hub names).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from posttrain.data.markers import strip_trailing
from posttrain.data.prompts import prompt_messages
from posttrain.data.readers import expand_instances
from posttrain.data.schema import DataError, Message, where

REFERENCE_KEYS = ("reference", "references", "answer", "output", "completion")
"""Record keys read as the reference answer, first match wins."""

DEFAULT_TASK = "all"
"""Task name of rows whose record names none."""


@dataclass
class EvalRow:
    prompt: list[Message]
    """The conversation up to the reply the model should write."""
    references: list[str] = field(default_factory=list)
    """Acceptable answers (empty: no reference; accuracy metrics skip the row)."""
    task: str = DEFAULT_TASK
    """Task name for per-task results (`meta.task`, `task`, or Self-Instruct `name`)."""
    prediction: str | None = None
    """A given prediction (predictions files) instead of a generated one."""
    meta: dict[str, Any] = field(default_factory=dict)
    """The record's free-form meta."""
    path: str = ""
    """The file the row was read from (for error messages)."""
    line: int = 0
    """Its 1-based line (JSONL, CSV) or record number."""


def read_records(source: str) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(path, line, record) for every record of `source` (json, jsonl, parquet, csv, comma-separated, Hub names)."""
    from posttrain.data.readers import read_records as _read

    yield from _read(source)


def _clean_reference(text: str) -> str:
    """A reference without the end-of-text markers some datasets leave at its end (`posttrain.data.markers`)."""
    return strip_trailing(text.strip())[0].strip()


def _references(value: Any, path: str, line: int, fld: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) for v in values):
        raise DataError(f"{where(path, line, fld)}: expected a string or a list of strings, got {value!r}")
    return [_clean_reference(v) for v in values]


def _task(rec: dict[str, Any]) -> str:
    meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
    for value in (meta.get("task"), rec.get("task"), rec.get("name")):
        if isinstance(value, str) and value:
            return value
    return DEFAULT_TASK


def _preferred(rec: dict[str, Any], path: str, line: int) -> list[str]:
    """A preference pair / hh-rlhf transcript / ranking's preferred reply, as the reference."""
    from posttrain.data.preference import parse_record
    from posttrain.data.schema import Ranking

    item = parse_record(rec, "auto", path, line)
    if isinstance(item, Ranking):
        return [item.responses[item.ranking[0]]]
    replies = [m.content for m in item.chosen if m.role == "assistant"]
    return [_clean_reference(replies[-1])] if replies else []


def parse_eval_row(
    rec: dict[str, Any], path: str = "<data>", line: int = 0, system_prompt: str | None = None
) -> EvalRow:
    """One record -> EvalRow; the prompt is read by `posttrain.data.prompts.prompt_messages` (what PPO and the
    labelling app read too); the reference is a REFERENCE_KEYS field, else the conversation's last reply, else a
    preference record's preferred reply."""
    prompt, replies = prompt_messages(rec, path, line)
    references = [_clean_reference(replies[-1])] if replies else []
    if "chosen" in rec or "ranking" in rec:
        references = _preferred(rec, path, line)
    key = next((k for k in REFERENCE_KEYS if k in rec), None)
    if key is not None:
        references = _references(rec[key], path, line, key)
    prediction = rec.get("prediction")
    if prediction is not None and not isinstance(prediction, str):
        raise DataError(f"{where(path, line, 'prediction')}: expected a string, got {prediction!r}")
    if system_prompt and prompt[0].role != "system":
        prompt = [Message("system", system_prompt), *prompt]
    meta = rec["meta"] if isinstance(rec.get("meta"), dict) else {}
    return EvalRow(prompt, references, _task(rec), prediction, meta, path, line)


def read_eval_rows(source: str, system_prompt: str | None = None) -> list[EvalRow]:
    """Every record of `source` as EvalRows (Self-Instruct records give one row per instance)."""
    rows = []
    for path, line, rec in read_records(source):
        recs = expand_instances(rec, path, line)
        rows += [parse_eval_row(r, path, line, system_prompt) for r in recs]
    if not rows:
        raise DataError(f"{source}: no records")
    return rows


def read_prompts(source: str, system_prompt: str | None = None) -> list[list[Message]]:
    """Just the prompts of `source` (safety and preference files need no references)."""
    return [row.prompt for row in read_eval_rows(source, system_prompt)]


def read_conversations(source: str, system_prompt: str | None = None) -> list:
    """Whole conversations (any SFT format `posttrain.data.readers` detects) for the likelihood evaluation."""
    from posttrain.data.readers import read_conversations as _read

    return _read(source, "auto", system_prompt)
