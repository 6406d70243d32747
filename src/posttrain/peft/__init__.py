"""Parameter-efficient tuning for any Hugging Face causal LM: LoRA (+rsLoRA, DoRA), bottleneck adapters,
prefix tuning and prompt tuning, with PEFT-compatible adapter checkpoints.

    model = apply_peft(model, cfg.peft)             # freeze the base, inject, make "default" active
    with disable_adapters(model): ...               # the frozen base
    with reference_policy(model): ...               # the policy at step 0: the DPO / PPO reference
    save_adapter(model, "out/final"); load_adapter(base, "out/final")
"""

from posttrain.peft.api import (
    adapter_method,
    apply_peft,
    count_parameters,
    disable_adapters,
    has_adapters,
    merge_adapters,
    merge_and_unload,
    peft_configs,
    reference_policy,
    set_adapter,
    trainable_report,
    unmerge_adapters,
)
from posttrain.peft.config import AdapterConfig, LoraConfig, PeftConfig, PrefixConfig, PromptConfig
from posttrain.peft.io import load_adapter, read_config, read_heads, save_adapter

__all__ = [
    "AdapterConfig",
    "LoraConfig",
    "PeftConfig",
    "PrefixConfig",
    "PromptConfig",
    "adapter_method",
    "apply_peft",
    "count_parameters",
    "disable_adapters",
    "has_adapters",
    "load_adapter",
    "merge_adapters",
    "merge_and_unload",
    "peft_configs",
    "read_config",
    "read_heads",
    "reference_policy",
    "save_adapter",
    "set_adapter",
    "trainable_report",
    "unmerge_adapters",
]
