"""Wall time and peak memory of one pipeline stage.

    with Measure() as m:
        train()
    m.wall_s, m.peak_mib      # CUDA: max allocated during the stage; CPU: peak RSS above the stage's start RSS

On CPU the peak is sampled from /proc/self/statm by a background thread every 20 ms (ru_maxrss is a process-wide
high-water mark and cannot be reset). Freed memory that the allocator keeps counts as in use, so later stages can
read low; the number is a rough per-stage footprint, not an exact allocation count.
"""

from __future__ import annotations

import os
import threading
import time

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: the process high-water mark is the best we have
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Measure:
    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.wall_s = 0.0
        self.peak_mib = 0.0
        self.kind = "cuda_max_allocated" if torch.cuda.is_available() else "rss_delta"
        self._stop = threading.Event()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> Measure:
        self._t0 = time.time()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            self._start = self._peak = rss_bytes()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, rss_bytes())
        self.peak_mib = max(0, peak - self._start) / 2**20
        self.wall_s = time.time() - self._t0
