"""Supervised fine-tuning: next-token cross-entropy on assistant tokens only (labels -100 elsewhere), summed.

The LM head is applied only to the positions whose next token is trained: the trunk gives hidden states
(B, T, H), we keep the N rows with a label and project just those (N, V). On an instruction-tuning batch where
prompts are a third of the tokens this skips a third of the LM-head work and never materialises (B, T, V) logits.
Models that post-process logits (soft-capping, scaling) or expose no trunk use the plain full-logits path.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

IGNORE = -100
"""Label value that carries no loss."""

LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
"""Config fields of models whose forward changes the logits after the LM head; those use the full-logits path."""

TRUNK_INPUTS = ("input_ids", "attention_mask", "position_ids")


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) labels -> (B, T-1) targets: position t predicts token t+1."""
    return labels[:, 1:]


def trunk_of(model: torch.nn.Module) -> torch.nn.Module | None:
    """The decoder stack under the LM head, or None when the selective path cannot be used."""
    config = getattr(model, "config", None)
    if config is None or model.get_output_embeddings() is None:
        return None
    if any(getattr(config, name, None) not in (None, 1.0) for name in LOGIT_POSTPROCESSING):
        return None
    trunk = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "base_model", None)
    return None if trunk is None or trunk is model else trunk


def selective_ce(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    """Summed CE of `head(hidden)` rows whose next-token label is trained. hidden (B, T, H), labels (B, T)."""
    targets = shifted_targets(labels)
    keep = targets != IGNORE  # (B, T-1)
    rows = hidden[:, :-1][keep]  # (N, H)
    logits = head(rows).float()  # (N, V)
    return F.cross_entropy(logits, targets[keep], reduction="sum")


def full_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed CE over all shifted positions with a label. logits (B, T, V), labels (B, T)."""
    targets = shifted_targets(labels)
    flat = logits[:, :-1].float().reshape(-1, logits.shape[-1])  # (B*(T-1), V)
    return F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE, reduction="sum")


class SFTObjective:
    """Objective for the training loop: summed assistant-token CE; units = trained label positions."""

    name = "sft"

    def units(self, batch: dict[str, Any]) -> int:
        return int((shifted_targets(batch["labels"]) != IGNORE).sum())

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return sft_loss(model, batch), {}


def sft_loss(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Summed next-token CE over trained positions of `batch` (input_ids, labels, optional mask/positions)."""
    inputs = {k: batch[k] for k in TRUNK_INPUTS if batch.get(k) is not None}
    trunk = trunk_of(model)
    if trunk is None:
        return full_ce(model(**inputs, use_cache=False).logits, batch["labels"])
    hidden = trunk(**inputs, use_cache=False).last_hidden_state  # (B, T, H)
    return selective_ce(hidden, batch["labels"], model.get_output_embeddings())
