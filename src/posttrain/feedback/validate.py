"""What a judgement may contain, checked without coercion: the limits the server and the store both enforce.

    task_id   a JSON integer, 1 .. 2**63-1 (not "3", not 3.0, not true)
    ranking   a JSON list of integers, a permutation of 0..k-1 (k = the task's response count, at most MAX_RESPONSES)
    criteria  optional object, at most k entries: {"<response index>": {"<name>": true|false, ...}}, at most
              MAX_CRITERIA names per response, each name 1..MAX_NAME characters
    flags     optional list of distinct response indices (integers in 0..k-1)
    comment   optional string of at most MAX_COMMENT characters (a longer one is refused, never cut)
    seconds   optional finite number >= 0 (time the page says the labeller took; accepted, not stored)

`json.loads` gives bools as ints' subclass, so every integer check is `type(x) is int`.
"""

from __future__ import annotations

import math
from typing import Any

from posttrain.errors import UserError

MAX_RESPONSES = 32
MAX_CRITERIA = 8
MAX_NAME = 32
MAX_COMMENT = 2000
MAX_ID = 2**63 - 1  # SQLite's INTEGER range
FIELDS = ("task_id", "ranking", "criteria", "flags", "comment", "seconds")


class InvalidJudgement(UserError, ValueError):
    """A judgement whose fields have the wrong type, size or values."""


def _is_int(x: Any) -> bool:
    return type(x) is int


def check_fields(data: Any) -> dict[str, Any]:
    """The request body of POST /api/judgement, checked for shape: an object of known fields with a valid task_id."""
    if not isinstance(data, dict):
        raise InvalidJudgement(f"expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise InvalidJudgement(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    for name in ("task_id", "ranking"):
        if name not in data:
            raise InvalidJudgement(f"field '{name}' is required")
    for name, value in data.items():
        if value is None:
            raise InvalidJudgement(f"field '{name}' is null (leave an optional field out instead)")
    check_task_id(data["task_id"])
    seconds = data.get("seconds", 0)
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds < math.inf:
        raise InvalidJudgement(f"field 'seconds' must be a finite number >= 0, got {seconds!r:.40}")
    return data


def check_task_id(task_id: Any) -> int:
    if not _is_int(task_id) or not 1 <= task_id <= MAX_ID:
        raise InvalidJudgement(f"field 'task_id' must be a positive JSON integer, got {task_id!r:.40}")
    return task_id


def check_judgement(ranking: Any, criteria: Any, flags: Any, comment: Any, k: int) -> None:
    """The content of a judgement of a task with k responses; raises InvalidJudgement naming the field."""
    if not isinstance(ranking, list) or not all(_is_int(i) for i in ranking):
        raise InvalidJudgement(f"field 'ranking' must be a list of integers, got {ranking!r:.80}")
    if sorted(ranking) != list(range(k)):
        raise InvalidJudgement(f"ranking must order all {k} responses exactly once, got {ranking!r:.80}")
    _check_criteria(criteria, k)
    if not isinstance(flags, list) or not all(_is_int(i) and 0 <= i < k for i in flags):
        raise InvalidJudgement(f"field 'flags' must be a list of response indices in 0..{k - 1}")
    if len(set(flags)) != len(flags):
        raise InvalidJudgement("field 'flags' names a response twice")
    if not isinstance(comment, str):
        raise InvalidJudgement(f"field 'comment' must be a string, got {type(comment).__name__}")
    if len(comment) > MAX_COMMENT:
        raise InvalidJudgement(f"field 'comment' has {len(comment)} characters; the limit is {MAX_COMMENT}")


def _check_criteria(criteria: Any, k: int) -> None:
    if not isinstance(criteria, dict) or len(criteria) > k:
        raise InvalidJudgement(f"field 'criteria' must be an object with at most {k} entries")
    indices = {str(i) for i in range(k)}
    for key, marks in criteria.items():
        if key not in indices:
            raise InvalidJudgement(f"field 'criteria': key {key!r:.40} is not a response index in 0..{k - 1}")
        if not isinstance(marks, dict) or len(marks) > MAX_CRITERIA:
            raise InvalidJudgement(
                f"field 'criteria.{key}' must be an object of at most {MAX_CRITERIA} name: true|false"
            )
        for name, value in marks.items():
            if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or type(value) is not bool:
                raise InvalidJudgement(
                    f"field 'criteria.{key}': {name!r:.40} must be a 1..{MAX_NAME} character name "
                    "with a true|false value"
                )
