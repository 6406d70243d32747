"""Rewards a program computes (RL with verifiable rewards): answer checkers, format rules, a length penalty, and
weighted sums of them, each called as fn(row, response text, response ids) -> float.

    term = builtin("number", field="answer")               # 1.0 when the last number equals meta["answer"]
    score = combine([(1.0, builtin("exact")), (0.2, builtin("regex", pattern=r"^\\d+$"))])
    scores = checked(batch(score), "mine", rows, texts, ids)  # ValueError naming the prompt on NaN / inf / raise

Built-ins (`row.meta[field]` is the reference; a list holds several accepted answers, the best counts):
- exact: 1 when the stripped response equals a reference.
- normalized: 1 when equal after SQuAD normalisation (lowercase, no punctuation or articles, single spaces).
- number: 1 when the last number in the response equals a reference's number (|a - b| <= 1e-6 * max(1, |b|));
  thousands separators are ignored ("1,234" is 1234); 0 when the response has no number.
- regex: 1 when `pattern` matches somewhere in the response (re.search), else 0: a format reward.
- length: -(max(0, n - max_tokens) / max_tokens) for a response of n tokens: 0 within the limit, -1 at twice it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from posttrain.data.schema import PromptRow

Term = Callable[[PromptRow, str, list[int]], float]

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")

BUILTINS = ("exact", "normalized", "number", "regex", "length")
"""Names `builtin` accepts."""


def last_number(text: str) -> float | None:
    """The last number written in `text` ("The answer is 1,234.5." -> 1234.5), or None."""
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def _references(row: PromptRow, field: str) -> list[str]:
    if field not in row.meta or row.meta[field] is None:
        raise ValueError(f"the prompt row has no '{field}' field to check the response against")
    value = row.meta[field]
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def _same_number(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b))


def builtin(name: str, field: str = "answer", pattern: str = "", max_tokens: int = 0) -> Term:
    """The built-in reward `name` (see the module docstring)."""
    from posttrain.eval.accuracy import normalize_answer

    if name == "exact":
        return lambda row, text, ids: float(any(text.strip() == r.strip() for r in _references(row, field)))
    if name == "normalized":
        return lambda row, text, ids: float(
            any(normalize_answer(text) == normalize_answer(r) for r in _references(row, field))
        )
    if name == "number":
        return lambda row, text, ids: float(
            any(_same_number(last_number(text), last_number(r)) for r in _references(row, field))
        )
    if name == "regex":
        if not pattern:
            raise ValueError("reward regex: give the pattern")
        try:
            compiled = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"reward regex: bad pattern {pattern!r}: {e}") from None
        return lambda row, text, ids: float(compiled.search(text) is not None)
    if name == "length":
        if max_tokens < 1:
            raise ValueError("reward length: give max_tokens >= 1")
        return lambda row, text, ids: -max(0, len(ids) - max_tokens) / max_tokens
    raise ValueError(f"reward {name!r} is not one of {' | '.join(BUILTINS)}")


def combine(terms: Sequence[tuple[float, Term]]) -> Term:
    """sum(weight * term) over the terms."""
    if not terms:
        raise ValueError("no reward terms")
    return lambda row, text, ids: sum(w * t(row, text, ids) for w, t in terms)


def describe(row: PromptRow) -> str:
    """The prompt in a few words, for error messages."""
    if row.messages:
        text = row.messages[-1].get("content", "")
    else:
        text = f"<{len(row.ids)} prompt tokens>"
    return f"{text[:80]!r}" + (f" ({row.source})" if row.source else "")


def batch(term: Term) -> Callable[[Sequence[PromptRow], Sequence[str], Sequence[list[int]]], list[float]]:
    """A per-response term as a batch reward function."""
    return lambda rows, texts, ids: [term(r, t, i) for r, t, i in zip(rows, texts, ids)]


def checked(
    fn: Callable, name: str, rows: Sequence[PromptRow], texts: Sequence[str], ids: Sequence
) -> list[float]:
    """The batch reward fn's scores; an exception or a NaN / inf score stops the run naming the prompt (a batch
    that raises is retried one row at a time to find it)."""
    try:
        values = [float(x) for x in fn(rows, texts, ids)]
    except Exception as e:  # noqa: BLE001 - the user's reward: find the row and say which
        for i in range(len(rows)):
            try:
                fn(rows[i : i + 1], texts[i : i + 1], ids[i : i + 1])
            except Exception as inner:  # noqa: BLE001
                raise ValueError(
                    f"reward {name} failed on prompt {describe(rows[i])}: {type(inner).__name__}: {inner}"
                ) from None
        raise ValueError(f"reward {name} failed on a batch of {len(rows)}: {type(e).__name__}: {e}") from None
    if len(values) != len(texts):
        raise ValueError(f"reward {name} returned {len(values)} scores for {len(texts)} responses")
    for row, text, v in zip(rows, texts, values):
        if not math.isfinite(v):
            raise ValueError(f"reward {name} is {v} on prompt {describe(row)} (response {text[:60]!r})")
    return values


def meta_keys(rows: Sequence[PromptRow]) -> dict[str, list[Any]]:
    """Every meta key of the rows as a column (None where a row lacks it): what `module:function` rewards get."""
    keys = sorted({k for r in rows for k in r.meta})
    return {k: [r.meta.get(k) for r in rows] for k in keys}
