"""Inter-labeller agreement: Kendall's tau between two rankings of the same responses, averaged over task pairs."""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Any


def kendall_tau(a: list[int], b: list[int]) -> float:
    """Kendall's tau-a between two rankings (lists of item ids, best first) of the same items.

    tau = (concordant - discordant) / (n choose 2): 1 for identical orders, -1 for reversed ones.
    """
    if sorted(a) != sorted(b):
        raise ValueError(f"rankings must order the same items: {a} vs {b}")
    n = len(a)
    if n < 2:
        return 1.0
    pos_a = {x: i for i, x in enumerate(a)}
    pos_b = {x: i for i, x in enumerate(b)}
    score = 0
    for x, y in combinations(a, 2):
        score += 1 if (pos_a[x] - pos_a[y]) * (pos_b[x] - pos_b[y]) > 0 else -1
    return score / (n * (n - 1) / 2)


def agreement(judgements: list[dict[str, Any]]) -> dict[str, float | int]:
    """Mean Kendall's tau over every pair of labellers who ranked the same task."""
    by_task: dict[int, list[list[int]]] = defaultdict(list)
    for j in judgements:
        by_task[j["task_id"]].append(j["ranking"])
    taus = [kendall_tau(a, b) for rankings in by_task.values() for a, b in combinations(rankings, 2)]
    return {"pairs": len(taus), "kendall_tau": sum(taus) / len(taus) if taus else float("nan")}
