"""Value ranges for config fields: a config dataclass lists them in `checks`, and `config.check_values` applies
them when the config loads, before anything is written.

    checks: ClassVar[dict] = {"lr": POSITIVE, "batch_size": at_least(1)}
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Check:
    """A value range a config field must be in (`checks` on a config dataclass), and how it reads."""

    ok: Callable[[Any], bool]
    text: str


POSITIVE = Check(lambda v: math.isfinite(v) and v > 0, "> 0")
NON_NEGATIVE = Check(lambda v: math.isfinite(v) and v >= 0, ">= 0")
FRACTION = Check(lambda v: math.isfinite(v) and 0 <= v < 1, "in [0, 1)")
UNIT = Check(lambda v: math.isfinite(v) and 0 <= v <= 1, "in [0, 1]")


def at_least(n: int) -> Check:
    return Check(lambda v: v >= n, f">= {n}")
