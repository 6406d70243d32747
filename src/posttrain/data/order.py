"""The one data order every batch source uses: a seeded epoch of optimiser steps, the same at every world size.

    steps = epoch_order(lengths, step_size=32, seed=0, epoch=0, group_by_length=True)   # [[sample idx]] per step
    micro = split_step(steps[0], parts=8)        # 8 near-equal micro-batches; rank r of W takes parts r*A..(r+1)*A

The order depends only on the *global* step size (batch_size x grad_accum x world_size samples), never on how a
step is cut into micro-batches or shared among ranks: 1 process with batch 8 and 2 processes with batch 4 train on
the same samples at every step, so with the loss normalised by the step's global units they take the same steps.
With grouping by length, a seeded shuffle is sorted by length within windows of MEGA_STEPS steps, cut into steps
and the steps shuffled, so each step (and each of its micro-batches) holds samples of similar length.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

MEGA_STEPS = 64
"""With group_by_length, samples are sorted by length within windows of MEGA_STEPS optimiser steps."""


def epoch_order(
    lengths: Sequence[int], step_size: int, seed: int, epoch: int, group_by_length: bool = True
) -> list[list[int]]:
    """The epoch's optimiser steps as lists of sample indices (longest first within a step when grouping); the
    last step holds the remainder (fewer than `step_size` samples) when the data does not divide evenly."""
    if step_size < 1:
        raise ValueError(f"step size must be at least 1, got {step_size}")
    rng = random.Random(seed + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    if group_by_length:
        window = MEGA_STEPS * step_size
        idx = [
            i
            for w in range(0, len(idx), window)
            for i in sorted(idx[w : w + window], key=lambda j: -lengths[j])
        ]
    steps = [idx[i : i + step_size] for i in range(0, len(idx), step_size)]
    if group_by_length:
        rng.shuffle(steps)
    return steps


def split_step(step: list[int], parts: int) -> list[list[int]]:
    """`step` cut into `parts` contiguous micro-batches whose sizes differ by at most one (a full step: all of
    batch_size; the short last step: spread so that every rank gets samples when there are enough)."""
    size, extra = divmod(len(step), parts)
    out, start = [], 0
    for p in range(parts):
        n = size + (p < extra)
        out.append(step[start : start + n])
        start += n
    return out
