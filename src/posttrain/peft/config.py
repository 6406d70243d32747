"""PEFT configs: `peft.method` picks one; each method's knobs live in its own section (`peft.lora.r=16`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from posttrain.checks import FRACTION, POSITIVE, at_least


@dataclass
class LoraConfig:
    r: int = 8
    """Rank of the update B @ A."""
    alpha: float = 16.0
    """Scaling numerator: update is (alpha / r) * B @ A (alpha / sqrt(r) with rslora)."""
    dropout: float = 0.0
    """Dropout on the LoRA branch input."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module name suffixes to wrap (e.g. [q_proj, v_proj]) or 'all-linear' (every linear but the LM head)."""
    rslora: bool = False
    """Rank-stabilised scaling alpha / sqrt(r)."""
    dora: bool = False
    """Weight-decomposed LoRA: learn a magnitude vector per output feature."""

    checks: ClassVar[dict] = {"r": at_least(1), "alpha": POSITIVE, "dropout": FRACTION}


@dataclass
class AdapterConfig:
    kind: Literal["houlsby", "pfeiffer", "parallel"] = "houlsby"
    """houlsby (after attention and after MLP) | pfeiffer (after MLP) | parallel (beside the MLP)."""
    reduction_factor: int = 16
    """Bottleneck size = hidden_size / reduction_factor."""
    non_linearity: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    """relu | gelu | silu | tanh."""

    checks: ClassVar[dict] = {"reduction_factor": at_least(1)}


@dataclass
class PrefixConfig:
    num_virtual_tokens: int = 16
    """Key/value prefix length per layer."""
    projection: bool = False
    """Reparameterise prefixes through an MLP while training (dropped at save time)."""
    projection_hidden: int = 128
    """Hidden size of the reparameterisation MLP."""
    init_text: str | None = None
    """Initialise the prefix with the keys/values the frozen model computes for this text (repeated/cut to length;
    Li & Liang 2021: real words' activations train better than random ones), so the tuned model starts as the base
    model reading that text first; random normal values if unset. Not with `projection`."""

    checks: ClassVar[dict] = {"num_virtual_tokens": at_least(1), "projection_hidden": at_least(1)}

    def check(self) -> list[tuple[str, str]]:
        if self.init_text is not None and self.projection:
            return [
                (
                    "init_text",
                    "unset with projection=true (an MLP's output cannot start at given keys/values)",
                )
            ]
        return []


@dataclass
class PromptConfig:
    num_virtual_tokens: int = 16
    """Soft tokens prepended to the input embeddings."""
    init_text: str | None = None
    """Initialise soft tokens from this text's embeddings (repeated/cut to length); random vocab rows if unset."""

    checks: ClassVar[dict] = {"num_virtual_tokens": at_least(1)}


@dataclass
class PeftConfig:
    method: Literal["none", "lora", "adapter", "prefix", "prompt"] = "none"
    """none (full fine-tuning) | lora | adapter | prefix | prompt."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    prefix: PrefixConfig = field(default_factory=PrefixConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    modules_to_save: list[str] = field(default_factory=list)
    """Extra base modules trained fully and saved with the adapter (e.g. [embed_tokens] after adding tokens)."""
    trainable_tokens: list[str] = field(default_factory=list)
    """Embedding (and LM head) rows that train with the adapter: token strings, or `template` for the special tokens
    the chat template writes. Use it when the base never saw those tokens (a base model with a chat template added):
    frozen, their random rows keep a PEFT model from learning to end a turn. Saved as PEFT's
    trainable_token_indices."""
