"""Quality filters for instruction data: length bounds, empty or copied outputs, near-duplicates.

A reply "copied from the instruction" is one contained in it; class labels are too (the prompt offers them), so the
rule skips replies under `copy_min_tokens` words (or `copy_min_chars` characters) and replies that are one of the
record's offered choices (`offered_choices`: meta.choices / meta.options, bulleted lines, an "Options: a, b" list,
an "a, b, or c" list).
Per-label counts before and after filtering (`label_of`) show what the filters did to classification data; a label
that loses every record is reported in `warnings`.

Near-duplicates: word n-gram shingles of the normalised text (lowercase, [a-z0-9] tokens), MinHash signatures
(`num_perm` seeded universal hashes) banded into an LSH index to find candidates, then the exact Jaccard similarity
of the shingle sets decides: a record is dropped when it reaches `dedup_threshold` with an earlier kept record.
The first occurrence wins, so the result is deterministic for a given input order.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+")
_PRIME = (1 << 31) - 1


@dataclass
class FilterConfig:
    min_words: int = 1
    """Shortest response kept, in words."""
    max_words: int | None = None
    """Longest response kept, in words (None: no bound)."""
    min_chars: int = 1
    """Shortest response kept, in characters (after stripping)."""
    max_chars: int | None = None
    """Longest response kept, in characters (None: no bound)."""
    drop_copied: bool = True
    """Drop responses equal to the input, or contained in the instruction."""
    copy_min_chars: int = 20
    """Containment only counts for responses at least this long, in characters ..."""
    copy_min_tokens: int = 4
    """... and in words (`normalise` tokens): a label or short answer appears in its own prompt by design."""
    dedup_threshold: float | None = 0.8
    """Drop a record whose shingle Jaccard with an earlier kept one is >= this (None: no near-dedup)."""
    dedup_on: str = "all"
    """Text compared for near-duplicates: prompt | response | all."""
    ngram: int = 3
    """Shingle size in words."""
    num_perm: int = 64
    """MinHash permutations (a multiple of `band_rows`)."""
    band_rows: int = 4
    """Rows per LSH band: candidates are records that share all rows of some band."""
    seed: int = 0
    """Seeds the MinHash permutations."""


def normalise(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def prompt_response(rec: dict[str, Any]) -> tuple[str, str, str]:
    """(instruction = all turns before the last assistant reply, input = last user turn, response)."""
    msgs = rec.get("messages") or []
    last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=None)
    if last is None:
        return " ".join(m.get("content", "") for m in msgs), "", ""
    before = msgs[:last]
    user = next((m["content"] for m in reversed(before) if m.get("role") == "user"), "")
    return "\n".join(m.get("content", "") for m in before), user, msgs[last].get("content", "")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _option(text: str) -> str:
    """An answer option as compared: normalised, without surrounding quotes and end punctuation."""
    return _norm(text).strip(" \t\"'`.!?;:,")


_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\(?[A-Za-z]\)|\(?\d{1,2}[.)])\s+(\S.*)$")
_HEADED = re.compile(
    r"\b(?:options?|choices?|answers?|labels?|categories|classes|choose from|select from|pick from|one of)"
    r"\s*(?:are|is)?\s*[:\-]\s*(\S.*)$",
    re.IGNORECASE,
)
_CLAUSE = re.compile(r"[?!:;\n]|\.(?=\s|$)")
_LIST_SEP = re.compile(r"\s*,\s*(?:or\s+)?|\s+or\s+", re.IGNORECASE)
_MAX_OPTION_WORDS = 6
_META_CHOICES = ("choices", "options")
_META_LABELS = ("label", "category")


def _inline_options(clause: str) -> list[str]:
    """'... regarding world politics, sports, business, or science and technology' -> the items. Where the list
    starts inside the first item is not marked: its word suffixes up to one word longer than the longest other item
    count, and in a list of 3+ items (a clear enumeration) the whole first item too. Options are short: a clause
    with another item of more than `_MAX_OPTION_WORDS` words is not a list."""
    if not re.search(r"\bor\s+\S", clause, re.IGNORECASE):
        return []
    first, *rest = _LIST_SEP.split(clause.strip())
    longest = max((len(r.split()) for r in rest), default=_MAX_OPTION_WORDS + 1)
    if not rest or longest > _MAX_OPTION_WORDS:
        return []
    words = first.split()
    suffixes = [" ".join(words[-k:]) for k in range(1, min(len(words), longest + 1) + 1)]
    return suffixes + ([first] if len(rest) >= 2 else []) + rest


def offered_choices(rec: dict[str, Any]) -> set[str]:
    """The answer options a record offers (compared as `_option`): meta.choices / meta.options when it is a list;
    in the prompt, 2+ consecutive bulleted lines ("- a", "(A) a", "1. a"), a list after "Options:" (or Choices,
    Labels, "choose from", "one of"...), and "a or b" / "a, b, or c" lists (a clause with "or")."""
    meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
    found = [str(c) for k in _META_CHOICES if isinstance(meta.get(k), list) for c in meta[k]]
    instruction, _, _ = prompt_response(rec)
    block: list[str] = []
    for line in [*instruction.splitlines(), ""]:
        m = _BULLET.match(line)
        if m:
            block.append(m.group(1))
            continue
        found += block if len(block) >= 2 else []
        block = []
        headed = _HEADED.search(line)
        if headed:
            found += re.split(r"\s*(?:[,;|]|\bor\b)\s*", headed.group(1))
    found += [o for clause in _CLAUSE.split(instruction) for o in _inline_options(clause)]
    return {o for o in map(_option, found) if o}


def label_of(rec: dict[str, Any]) -> str | None:
    """The record's class label: a meta label field (label, category) when present, else the reply when the record
    is classification-like (the reply is one of its offered choices, or meta.is_classification is true)."""
    meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
    for key in _META_LABELS:
        if isinstance(meta.get(key), (str, int, bool)):
            return str(meta[key])
    reply = prompt_response(rec)[2].strip()
    if reply and (meta.get("is_classification") is True or _option(reply) in offered_choices(rec)):
        return reply
    return None


def _copied(instruction: str, reply: str, rec: dict[str, Any], cfg: FilterConfig) -> bool:
    """The reply is contained in the instruction, is long enough to count, and is not one of the offered choices."""
    resp = _norm(reply)
    return (
        len(resp) >= cfg.copy_min_chars
        and len(normalise(reply)) >= cfg.copy_min_tokens
        and resp in _norm(instruction)
        and _option(reply) not in offered_choices(rec)
    )


def rejection(rec: dict[str, Any], cfg: FilterConfig) -> str | None:
    """The first quality rule `rec` breaks (None: keep)."""
    instruction, user, response = prompt_response(rec)
    r = response.strip()
    words = len(r.split())
    checks = (
        ("empty_response", not r),
        ("too_few_chars", len(r) < cfg.min_chars),
        ("too_many_chars", cfg.max_chars is not None and len(r) > cfg.max_chars),
        ("too_few_words", words < cfg.min_words),
        ("too_many_words", cfg.max_words is not None and words > cfg.max_words),
        ("copied_input", cfg.drop_copied and _norm(r) == _norm(user)),
        ("copied_from_instruction", cfg.drop_copied and _copied(instruction, r, rec, cfg)),
    )
    return next((reason for reason, bad in checks if bad), None)


def shingles(text: str, n: int) -> set[str]:
    toks = normalise(text)
    if len(toks) <= n:
        return {" ".join(toks)} if toks else set()
    return {" ".join(toks[i : i + n]) for i in range(len(toks) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class MinHash:
    """Signatures from `num_perm` universal hashes (a*h + b) mod p over 31-bit stable shingle hashes."""

    def __init__(self, num_perm: int, seed: int):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _PRIME, size=(num_perm, 1), dtype=np.uint64)
        self.b = rng.integers(0, _PRIME, size=(num_perm, 1), dtype=np.uint64)

    def signature(self, sh: set[str]) -> np.ndarray:
        if not sh:
            return np.full(len(self.a), _PRIME, dtype=np.uint64)
        h = np.array(
            [
                int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "little") & _PRIME
                for s in sorted(sh)
            ],
            dtype=np.uint64,
        )
        return ((self.a * h[None, :] + self.b) % _PRIME).min(axis=1)  # (num_perm,)


def near_duplicates(texts: list[str], cfg: FilterConfig) -> list[int]:
    """Indices of texts whose Jaccard with an earlier kept text is >= cfg.dedup_threshold."""
    if cfg.num_perm % cfg.band_rows:
        raise ValueError(f"num_perm ({cfg.num_perm}) must be a multiple of band_rows ({cfg.band_rows})")
    mh = MinHash(cfg.num_perm, cfg.seed)
    buckets: dict[tuple, list[int]] = defaultdict(list)
    kept_sh: dict[int, set[str]] = {}
    dropped = []
    for i, text in enumerate(texts):
        sh = shingles(text, cfg.ngram)
        sig = mh.signature(sh)
        keys = [
            (b, sig[b * cfg.band_rows : (b + 1) * cfg.band_rows].tobytes())
            for b in range(cfg.num_perm // cfg.band_rows)
        ]
        candidates = {j for k in keys for j in buckets.get(k, ())}
        if any(jaccard(sh, kept_sh[j]) >= cfg.dedup_threshold for j in sorted(candidates)):
            dropped.append(i)
            continue
        kept_sh[i] = sh
        for k in keys:
            buckets[k].append(i)
    return dropped


def _dedup_text(rec: dict[str, Any], on: str) -> str:
    instruction, _, response = prompt_response(rec)
    return {"prompt": instruction, "response": response, "all": instruction + "\n" + response}[on]


def label_report(
    records: list[dict[str, Any]], reasons: list[str | None]
) -> tuple[dict[str, dict[str, dict[str, int]]], list[str]]:
    """Per task (meta.task) and label (`label_of`): records before and after filtering (`reasons[i]` is None for a
    kept record); and a warning for every label that lost all its records, naming the rules that removed them."""
    labels: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
    removed_by: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for rec, reason in zip(records, reasons):
        label = label_of(rec)
        if label is None:
            continue
        meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
        task = str(meta.get("task", "-"))
        row = labels[task].setdefault(label, {"before": 0, "after": 0})
        row["before"] += 1
        row["after"] += reason is None
        if reason:
            removed_by[task, label][reason] += 1
    report = {t: dict(sorted(rows.items())) for t, rows in sorted(labels.items())}
    warnings = [
        f"filter removed every record of label {label!r} in task {task!r} ({row['before']} before; "
        + ", ".join(f"{r}: {n}" for r, n in sorted(removed_by[task, label].items()))
        + ")"
        for task, rows in report.items()
        for label, row in rows.items()
        if row["after"] == 0
    ]
    return report, warnings


def filter_records(
    records: list[dict[str, Any]], cfg: FilterConfig
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Apply the quality rules, then near-duplicate removal; returns kept records and the stats: counts by reason,
    per-label counts before/after (`label_report`) and warnings (a label the filters removed entirely)."""
    if cfg.dedup_on not in ("prompt", "response", "all"):
        raise ValueError(f"dedup_on must be prompt | response | all, got {cfg.dedup_on!r}")
    reasons = [rejection(rec, cfg) for rec in records]
    if cfg.dedup_threshold is not None:
        passed = [i for i, r in enumerate(reasons) if r is None]
        for j in near_duplicates([_dedup_text(records[i], cfg.dedup_on) for i in passed], cfg):
            reasons[passed[j]] = "near_duplicate"
    kept = [rec for rec, r in zip(records, reasons) if r is None]
    counts = Counter(r for r in reasons if r)
    if cfg.dedup_threshold is not None:
        counts["near_duplicate"] += 0  # reported even when nothing was dropped
    labels, warnings = label_report(records, reasons)
    stats: dict[str, Any] = dict(
        sorted({**counts, "records_in": len(records), "records_out": len(kept)}.items())
    )
    return kept, {**stats, "labels": labels, "warnings": warnings}
