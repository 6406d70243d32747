"""Task accuracy: generate for prompts with references and score exact, normalised and contains matches.

    out = task_accuracy(model, tok, read_eval_rows("tasks.jsonl"))       # generate greedily, then score
    out = score_file("predictions.jsonl")                                  # rows with a `prediction`: no model
    out["overall"]["normalized"], out["per_task"]["add"]["exact"]

Metrics (each 0 or 1 per row, the best over a row's references, averaged per task and overall):
- exact: the stripped prediction equals the stripped reference.
- normalized: equal after SQuAD normalisation (lowercase, no punctuation, no articles a/an/the, single spaces).
- contains: the normalised reference occurs in the normalised prediction as whole words.
- a user metric `module:function` (or `path/to/file.py:function`): `fn(prediction, reference, row) -> float`, where
  `row` is the `EvalRow` (prompt, references, task, meta).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import string
from collections.abc import Callable, Sequence
from pathlib import Path

from posttrain.config import ConfigError
from posttrain.data.schema import DataError, where
from posttrain.eval.io import EvalRow, read_eval_rows

Metric = Callable[[str, str, EvalRow], float]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation) | set("‘’“”–—…«»")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation, drop articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str, row: EvalRow | None = None) -> float:
    return float(prediction.strip() == reference.strip())


def normalized_match(prediction: str, reference: str, row: EvalRow | None = None) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def contains(prediction: str, reference: str, row: EvalRow | None = None) -> float:
    ref = normalize_answer(reference)
    return float(bool(ref) and f" {ref} " in f" {normalize_answer(prediction)} ")


METRICS: dict[str, Metric] = {"exact": exact_match, "normalized": normalized_match, "contains": contains}
"""Built-in metrics by name."""

DEFAULT_METRICS = ("exact", "normalized", "contains")
"""Metrics computed when none are named."""


def load_user_metric(spec: str) -> Metric:
    """`package.module:function` or `path/to/file.py:function` -> the function."""
    if ":" not in spec:
        raise ConfigError(f"user metric {spec!r}: expected 'module:function' or 'file.py:function'")
    module_name, func_name = spec.rsplit(":", 1)
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ConfigError(f"user metric {spec!r}: no file {path}")
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except SyntaxError as e:
        raise ConfigError(
            f"user metric {spec!r}: {where(e.filename, e.lineno)}: invalid Python ({e.msg})"
        ) from None
    except Exception as e:  # the user's module failed to import: say so in one line, whatever it raised
        raise ConfigError(
            f"user metric {spec!r}: cannot import {module_name!r} ({type(e).__name__}: {e})"
        ) from None
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ConfigError(f"user metric {spec!r}: {module_name} has no function {func_name!r}")
    return fn


def resolve_metrics(
    names: Sequence[str] = DEFAULT_METRICS, user_metric: str | Metric | None = None
) -> dict[str, Metric]:
    """Name -> function for the built-ins named, plus the user metric (as `user` or its function name)."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(
            f"accuracy.metrics: unknown metric(s) {unknown}; expected some of {', '.join(METRICS)}"
        )
    out = {n: METRICS[n] for n in names}
    if user_metric is not None:
        fn = load_user_metric(user_metric) if isinstance(user_metric, str) else user_metric
        out[getattr(fn, "__name__", "user")] = fn
    return out


def score_row(prediction: str, row: EvalRow, metrics: dict[str, Metric]) -> dict[str, float]:
    """Each metric's best score over the row's references."""
    return {
        name: max(float(fn(prediction, ref, row)) for ref in row.references) for name, fn in metrics.items()
    }


def _means(scored: list[dict[str, float]], names: Sequence[str]) -> dict[str, float]:
    out = {n: sum(s[n] for s in scored) / len(scored) for n in names}
    out["n"] = len(scored)
    return out


def score_predictions(
    rows: Sequence[EvalRow],
    predictions: Sequence[str],
    metrics: Sequence[str] = DEFAULT_METRICS,
    user_metric: str | Metric | None = None,
) -> dict:
    """{"overall": {metric: mean, "n"}, "per_task": {task: {...}}, "rows": [...], "skipped": rows without reference}."""
    if len(rows) != len(predictions):
        raise ValueError(f"{len(rows)} rows but {len(predictions)} predictions")
    fns = resolve_metrics(metrics, user_metric)
    details, by_task = [], {}
    for row, pred in zip(rows, predictions):
        if not row.references:
            continue
        scores = score_row(pred, row, fns)
        by_task.setdefault(row.task, []).append(scores)
        details.append(
            {
                "task": row.task,
                "prompt": row.prompt[-1].content,
                "reference": row.references[0],
                "prediction": pred,
                **scores,
            }
        )
    if not details:
        raise ValueError("no row has a reference to score against")
    flat = [s for group in by_task.values() for s in group]
    return {
        "overall": _means(flat, list(fns)),
        "per_task": {t: _means(g, list(fns)) for t, g in sorted(by_task.items())},
        "rows": details,
        "skipped": len(rows) - len(details),
    }


def score_file(
    source: str, metrics: Sequence[str] = DEFAULT_METRICS, user_metric: str | Metric | None = None
) -> dict:
    """Accuracy of the `prediction` field of every record of `source` (no model)."""
    rows = read_eval_rows(source)
    missing = [r for r in rows if r.prediction is None]
    if missing:
        raise DataError(
            f"{where(missing[0].path, missing[0].line, 'prediction')}: missing "
            f"({len(missing)} of {len(rows)} records have no 'prediction')"
        )
    return score_predictions(rows, [r.prediction for r in rows], metrics, user_metric)


def task_accuracy(
    model,
    tokenizer,
    rows: Sequence[EvalRow],
    metrics: Sequence[str] = DEFAULT_METRICS,
    user_metric: str | Metric | None = None,
    template: str = "auto",
    max_new_tokens: int = 128,
    batch_size: int = 16,
    temperature: float = 0.0,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Generate a response to every row (greedy by default) and score it with `score_predictions`."""
    from posttrain.eval.generation import respond

    ro = respond(
        model,
        tokenizer,
        [r.prompt for r in rows],
        template,
        max_new_tokens,
        batch_size,
        temperature,
        seed,
        progress,
    )
    return score_predictions(rows, ro.texts, metrics, user_metric)
