"""Prompt tuning (Lester et al. 2021): n trainable soft tokens in front of every input.

Mathematically the model sees `cat(soft, embed(input_ids))`. Instead of changing the inputs (which would shift
logits and labels by n for every caller), the soft tokens are run through the frozen trunk once per forward,
at positions 0..n-1, and their keys/values become a prefix cache that the real tokens (at positions n, n+1,
...) attend to (see `virtual.py`). Same numbers, outputs stay aligned with input_ids, and generation with a KV
cache keeps the soft prompt on every step.
"""

from __future__ import annotations

import torch
from torch import nn

from posttrain.peft.config import PromptConfig
from posttrain.peft.prefix import virtual_tokens
from posttrain.peft.virtual import record_kv, text_ids


class SoftPrompt(nn.Module):
    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.num_virtual_tokens = init.shape[0]
        self.embedding = nn.Parameter(init.detach().clone().float())  # (n, hidden)
        self.mark_initial()

    @torch.no_grad()
    def mark_initial(self) -> None:
        """Remember the soft prompt as it is now as the step-0 policy's (the DPO / PPO reference; not saved)."""
        self.register_buffer("initial", self.embedding.detach().clone(), persistent=False)

    def kv(
        self, trunk: nn.Module, cache_arg: str, initial: bool = False
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer (keys, values) of the soft tokens run through the trunk: trained, or the initial ones."""
        source = self.initial if initial else self.embedding
        embeds = source.to(trunk.get_input_embeddings().weight.dtype).unsqueeze(0)  # (1, n, hidden)
        return record_kv(trunk, cache_arg, inputs_embeds=embeds)


def initial_embeddings(model: nn.Module, cfg: PromptConfig, tokenizer=None, seed: int = 0) -> torch.Tensor:
    """(n, hidden): the init text's token embeddings repeated/cut to n, or random rows of the vocabulary."""
    table = model.get_input_embeddings().weight
    n = cfg.num_virtual_tokens
    if cfg.init_text:
        ids = text_ids(tokenizer, cfg.init_text, n, "peft.prompt.init_text")
    else:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, table.shape[0], (n,), generator=g).tolist()
    with (
        torch.no_grad()
    ):  # through the module: scaled embeddings (Gemma's sqrt(hidden)) scale here, as in PEFT
        return model.get_input_embeddings()(torch.tensor(ids, device=table.device)).detach()


def inject(model: nn.Module, cfg: PromptConfig, name: str, tokenizer=None) -> int:
    holder = virtual_tokens(model, "prompt")
    holder.encoders[name] = SoftPrompt(initial_embeddings(model, cfg, tokenizer))
    return 1
