"""ROUGE-L F-measure, as Google's `rouge_score` computes it with `use_stemmer=False`.

Tokens: lowercase, every run of characters other than [a-z0-9] becomes a space, split on whitespace. Then
LCS = longest common subsequence of the two token lists, P = LCS / len(prediction), R = LCS / len(target),
F = 2PR / (P + R) (0 when either side has no tokens or nothing is shared). Self-Instruct keeps a new
instruction only when its ROUGE-L against every instruction already in the pool is below 0.7.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def tokenize(text: str) -> list[str]:
    return _NON_ALNUM.sub(" ", text.lower()).split()


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_tokens(target: Sequence[str], prediction: Sequence[str]) -> float:
    if not target or not prediction:
        return 0.0
    lcs = lcs_length(target, prediction)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(prediction), lcs / len(target)
    return 2 * p * r / (p + r)


def rouge_l(target: str, prediction: str) -> float:
    """ROUGE-L F-measure of two strings (symmetric)."""
    return rouge_l_tokens(tokenize(target), tokenize(prediction))


class RougePool:
    """Instructions kept so far, pre-tokenised, for `max_score(candidate)` against all of them."""

    def __init__(self, texts: Sequence[str] = ()):
        self.texts: list[str] = []
        self.tokens: list[list[str]] = []
        for t in texts:
            self.add(t)

    def add(self, text: str) -> None:
        self.texts.append(text)
        self.tokens.append(tokenize(text))

    def max_score(self, candidate: str) -> tuple[float, str | None]:
        """Highest ROUGE-L against the pool and the instruction that reached it."""
        cand = tokenize(candidate)
        best, best_text = 0.0, None
        for text, toks in zip(self.texts, self.tokens):
            s = rouge_l_tokens(toks, cand)
            if s > best:
                best, best_text = s, text
        return best, best_text

    def __len__(self) -> int:
        return len(self.texts)
