"""Supervised fine-tuning: next-token cross-entropy on assistant tokens only (labels -100 elsewhere), summed.

Only the hidden states whose next token is trained go through the LM head (`posttrain.modeling.lm_forward`): on an
instruction-tuning batch where prompts are a third of the tokens this skips a third of the LM-head work and never
materialises (B, T, V) logits. The logits are the model's own (soft-capping and scaling applied).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from posttrain.modeling import IGNORE, label_positions, lm_forward, shifted_targets

__all__ = ["IGNORE", "SFTObjective", "sft_loss", "shifted_targets"]


class SFTObjective:
    """Objective for the training loop: summed assistant-token CE; units = trained label positions."""

    name = "sft"

    def units(self, batch: dict[str, Any]) -> int:
        return int((shifted_targets(batch["labels"]) != IGNORE).sum())

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return sft_loss(model, batch), {}


def sft_loss(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Summed next-token CE over trained positions of `batch` (input_ids, labels, optional mask/positions)."""
    rows, cols, targets = label_positions(batch["labels"])
    logits = lm_forward(model, batch, select=(rows, cols)).logits  # (N, V) fp32
    return F.cross_entropy(logits, targets, reduction="sum")
