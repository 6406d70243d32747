"""The one place that writes and reads what runs leave behind: `final/` directories that load anywhere.

save_final(model, tok, cfg, "runs/sft/final")            # causal LMs and adapters (model.py)
model, tok = load_for_inference(base, adapter="runs/sft/final")
save_reward_model(rm, tok, cfg, dir); load_reward_model(dir)      # reward models (reward.py)
save_policy_with_value(...); load_policy_with_value(dir, base)    # PPO policy, critic, value head (ppo.py)
export_adapter("runs/dpo/final", "out")                  # an adapter chain as one PEFT LoRA (export.py)
write_model_card("runs/sft/final", cfg, "sft", result)   # final/README.md (card.py)
"""

from posttrain.artifacts.card import write_model_card
from posttrain.artifacts.export import export_adapter
from posttrain.artifacts.model import (
    BASE_ADAPTERS_DIR,
    BASE_ADAPTERS_FILE,
    CONFIG_FILE,
    TOKENIZER_FILES,
    _peft,
    add_adapter_chain,
    base_adapters,
    has_adapters,
    load_for_inference,
    merge_base_adapters,
    save_final,
    save_tokenizer,
)

__all__ = [
    "BASE_ADAPTERS_DIR",
    "BASE_ADAPTERS_FILE",
    "CONFIG_FILE",
    "TOKENIZER_FILES",
    "_peft",
    "add_adapter_chain",
    "base_adapters",
    "export_adapter",
    "has_adapters",
    "load_for_inference",
    "merge_base_adapters",
    "save_final",
    "save_tokenizer",
    "write_model_card",
]
