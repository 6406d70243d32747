"""Progress on stderr that reads right on a terminal and in a log file: a tqdm bar when stderr is a TTY, else one
plain line every `every_s` seconds (and a last one at the end), which `nohup`, a pipe or a cluster job log keeps.

    bar = Progress(total=1000, desc="sft", unit="step", initial=0)
    bar.update(1, loss=1.234, lr=3e-4, tok_s=4521)
    bar.close()

A plain line: `[sft] step 120/1000 (12%) loss 1.234 lr 0.0003 tok_s 4521 | 1m02s elapsed, ETA 7m35s`. The interval
is `POSTTRAIN_PROGRESS_EVERY_S` (default 30 s; 0 prints every update), so a long run writes a line or two a minute.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

DEFAULT_EVERY_S = 30.0


def every_s() -> float:
    try:
        return max(0.0, float(os.environ.get("POSTTRAIN_PROGRESS_EVERY_S", DEFAULT_EVERY_S)))
    except ValueError:
        return DEFAULT_EVERY_S


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class Progress:
    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "step",
        initial: int = 0,
        enabled: bool = True,
        stream: TextIO | None = None,
        interval_s: float | None = None,
    ) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.interval = every_s() if interval_s is None else interval_s
        self.start = self.last_print = time.monotonic()
        self.start_n = initial
        self.fields: dict[str, Any] = {}
        self.bar = None
        self.printed_at: int | None = None
        if enabled and self.stream.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True
            )

    def update(self, n: int = 1, **fields: Any) -> None:
        self.n += n
        self.fields.update(fields)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            if fields:
                self.bar.set_postfix({k: _value(v) for k, v in fields.items()}, refresh=False)
            return
        now = time.monotonic()
        if now - self.last_print >= self.interval:
            self.last_print = now
            self._line(now)

    def line(self) -> str:
        """The plain progress line for the current state."""
        return self._text(time.monotonic())

    def _text(self, now: float) -> str:
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = "".join(f" {k} {_value(v)}" for k, v in self.fields.items())
        elapsed = now - self.start
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        eta = (
            f", ETA {duration((self.total - self.n) / rate)}"
            if self.total and rate > 0 and self.n < self.total
            else ""
        )
        return f"[{self.desc}] {self.unit} {done}{pct}{extra} | {duration(elapsed)} elapsed{eta}"

    def _line(self, now: float) -> None:
        self.printed_at = self.n
        print(self._text(now), file=self.stream, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        elif self.printed_at != self.n and self.n > self.start_n:
            self._line(time.monotonic())  # the last state, once
