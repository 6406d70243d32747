"""The two contracts between the one training loop and everything that plugs into it.

An Objective turns a micro-batch into a *summed* loss and a count of normalisation units (loss tokens for SFT,
pairs for DPO and reward models, response tokens for PPO). The loop divides every micro-batch's summed loss by the
total units of the whole optimiser step (all micro-batches, all ranks), so (batch 8, accum 1) and (batch 2, accum 4)
give the same gradient.

A BatchSource hands the loop the micro-batches of one optimiser step and can save / restore its position, so a
resumed run sees exactly the data an uninterrupted one would. PPO's source samples rollouts inside `next_step`.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Objective(Protocol):
    name: str

    def units(self, batch: dict[str, Any]) -> int:
        """How many normalisation units this micro-batch holds (known before the forward pass)."""
        ...

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """(summed loss over the micro-batch's units, metrics). Metrics are sums too; the loop divides by units."""
        ...


class BatchSource(Protocol):
    def next_step(self) -> list[dict[str, Any]] | None:
        """The micro-batches of the next optimiser step, or None when the data is exhausted."""
        ...

    def steps_per_epoch(self) -> int:
        """Optimiser steps in one pass (used to turn `epochs` into a step count)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


PADDING = "padding_micro_batch"
"""Micro-batch key: True on a stand-in batch a rank trains when an optimiser step has fewer samples than ranks. The
loop runs its forward and backward (so collective operations stay in step across ranks) with the loss times 0,
and counts none of its units, tokens or metrics."""
