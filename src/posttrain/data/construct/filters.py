"""Quality filters for instruction data: length bounds, empty or copied outputs, near-duplicates.

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
    """Containment only counts for responses at least this long (class labels appear in their own prompts)."""
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


def rejection(rec: dict[str, Any], cfg: FilterConfig) -> str | None:
    """The first quality rule `rec` breaks (None: keep)."""
    instruction, user, response = prompt_response(rec)
    r = response.strip()
    words = len(r.split())
    resp, inst = _norm(r), _norm(instruction)
    checks = (
        ("empty_response", not r),
        ("too_few_chars", len(r) < cfg.min_chars),
        ("too_many_chars", cfg.max_chars is not None and len(r) > cfg.max_chars),
        ("too_few_words", words < cfg.min_words),
        ("too_many_words", cfg.max_words is not None and words > cfg.max_words),
        ("copied_input", cfg.drop_copied and resp == _norm(user)),
        ("copied_from_instruction", cfg.drop_copied and len(resp) >= cfg.copy_min_chars and resp in inst),
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


def filter_records(
    records: list[dict[str, Any]], cfg: FilterConfig
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Apply the quality rules, then near-duplicate removal; returns kept records and counts by reason."""
    if cfg.dedup_on not in ("prompt", "response", "all"):
        raise ValueError(f"dedup_on must be prompt | response | all, got {cfg.dedup_on!r}")
    counts: Counter = Counter(records_in=len(records))
    kept = []
    for rec in records:
        reason = rejection(rec, cfg)
        if reason:
            counts[reason] += 1
        else:
            kept.append(rec)
    if cfg.dedup_threshold is not None:
        drop = set(near_duplicates([_dedup_text(r, cfg.dedup_on) for r in kept], cfg))
        counts["near_duplicate"] += len(drop)
        kept = [r for i, r in enumerate(kept) if i not in drop]
    counts["records_out"] = len(kept)
    return kept, dict(sorted(counts.items()))
