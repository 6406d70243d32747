"""Data mixing: how often each source is drawn (survey Section 5.1.2; T5's mixing strategies).

    weights       rate_i ∝ w_i                                    (explicit weights)
    proportional  rate_i ∝ min(n_i, K)                            (examples-proportional, limit K = cap)
    temperature   rate_i ∝ (min(n_i, K) / Σ_j min(n_j, K))^(1/T)   (T = 1: proportional; T -> inf: uniform)

Sources can also be pinned to a fixed share (e.g. safety data at 5%): the others share what is left by the strategy.
Sampling draws each output record's source from the rates (seeded), and takes records from each source in a
shuffled order, reshuffling when a source is exhausted (so small sources are repeated, large ones subsampled).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence
from typing import Any

from posttrain.errors import UsageError


class MixingError(UsageError, ValueError):
    """Rates, weights or a temperature that give no valid mixture (exit 2: the flags are wrong)."""


def _capped(sizes: Sequence[int], cap: int | None) -> list[int]:
    return [min(n, cap) if cap else n for n in sizes]


def _weights(sizes, weights, cap, temperature):
    if weights is None or len(weights) != len(sizes):
        raise MixingError("strategy 'weights' needs one weight per source (path:weight)")
    return list(weights)


def _proportional(sizes, weights, cap, temperature):
    return _capped(sizes, cap)


def _temperature(sizes, weights, cap, temperature):
    if not temperature > 0:
        raise MixingError(f"temperature must be > 0, got {temperature}")
    capped = _capped(sizes, cap)
    total = sum(capped)
    return [(n / total) ** (1.0 / temperature) if n else 0.0 for n in capped]


STRATEGIES = {"weights": _weights, "proportional": _proportional, "temperature": _temperature}


def mixing_rates(
    sizes: Sequence[int],
    strategy: str,
    weights: Sequence[float] | None = None,
    cap: int | None = None,
    temperature: float = 1.0,
) -> list[float]:
    """Sampling rate of each source (sums to 1)."""
    if strategy not in STRATEGIES:
        raise MixingError(f"strategy must be one of {' | '.join(STRATEGIES)}, got {strategy!r}")
    raw = STRATEGIES[strategy](sizes, weights, cap, temperature)
    if not all(math.isfinite(r) and r >= 0 for r in raw) or sum(raw) <= 0:
        raise MixingError(
            f"mixing weights (--source PATH:WEIGHT) must be >= 0 with a positive sum, got {raw}"
        )
    return [r / sum(raw) for r in raw]


def pin_rates(free_rates: Sequence[float], pinned: Sequence[float]) -> list[float]:
    """Rates for free sources (scaled to 1 - Σ pinned) followed by the pinned rates."""
    left = 1.0 - sum(pinned)
    if left < -1e-9 or not all(0 <= p <= 1 for p in pinned):
        raise MixingError(f"pinned rates (--rate) must be >= 0 and sum to at most 1, got {list(pinned)}")
    left = max(left, 0.0)
    if free_rates and left <= 1e-9:
        raise MixingError("pinned rates (--rate) sum to 1: nothing is left for the other sources")
    return [r * left for r in free_rates] + list(pinned)


def sample_mixture(
    sources: Sequence[Sequence[dict[str, Any]]],
    rates: Sequence[float],
    total: int,
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], list[int]]:
    """`total` records drawn source-by-rate; each record gets meta.mix_source; returns records and counts."""
    if len(sources) != len(rates):
        raise MixingError(f"{len(sources)} sources but {len(rates)} rates")
    for i, (src, r) in enumerate(zip(sources, rates)):
        if r > 0 and not src:
            raise MixingError(f"source {names[i] if names else i} is empty but has rate {r:.3f}")
    rng = random.Random(seed)
    picks = rng.choices(range(len(sources)), weights=rates, k=total)
    orders: list[list[int]] = [[] for _ in sources]
    counts = [0] * len(sources)
    out = []
    for s in picks:
        if not orders[s]:  # (re)shuffle an exhausted source
            orders[s] = rng.sample(range(len(sources[s])), len(sources[s]))
        rec = copy.deepcopy(sources[s][orders[s].pop()])
        if names:
            rec.setdefault("meta", {})["mix_source"] = names[s]
        out.append(rec)
        counts[s] += 1
    return out, counts
