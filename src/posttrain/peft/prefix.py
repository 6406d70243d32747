"""Prefix tuning (Li & Liang 2021): trainable keys and values prepended at every layer.

The prefix is one tensor of shape (n, 2 * layers * kv_heads * head_dim), laid out like PEFT's
`prompt_embeddings` (per token: layer 0 keys, layer 0 values, layer 1 keys, ...; each kv_heads x head_dim, so
it is right under GQA). With `projection`, it is computed by an MLP from an (n, hidden) embedding while
training, as PEFT's `prefix_projection` does; the MLP is dropped at save time and the computed prefix is saved
instead. With `init_text` the prefix starts as the keys and values the frozen model computes for that text (Li
& Liang's initialisation with real words), so the step-0 model is the base model reading the text first.
"""

from __future__ import annotations

import torch
from torch import nn

from posttrain.peft.base import trunk_of
from posttrain.peft.config import PrefixConfig
from posttrain.peft.virtual import VirtualTokens, cache_arg, kv_layout, record_kv, text_ids


class PrefixEncoder(nn.Module):
    def __init__(self, config, cfg: PrefixConfig, like: torch.Tensor, layout: tuple[int, int, int]) -> None:
        super().__init__()
        self.num_virtual_tokens = cfg.num_virtual_tokens
        self.layers, self.kv_heads, self.head_dim = (
            layout  # (layers, kv heads, head dim) of the model's cache
        )
        out = 2 * self.layers * self.kv_heads * self.head_dim
        kw = dict(device=like.device, dtype=torch.float32)
        if cfg.projection:
            hidden = config.get_text_config().hidden_size
            self.embedding = nn.Parameter(torch.randn(cfg.num_virtual_tokens, hidden, **kw))
            self.transform = nn.Sequential(
                nn.Linear(hidden, cfg.projection_hidden, **kw),
                nn.Tanh(),
                nn.Linear(cfg.projection_hidden, out, **kw),
            )
        else:
            self.embedding = nn.Parameter(torch.randn(cfg.num_virtual_tokens, out, **kw))
            self.transform = None
        self.mark_initial()

    @torch.no_grad()
    def mark_initial(self) -> None:
        """Remember the prefix as it is now as the step-0 policy's (the DPO / PPO reference; not saved)."""
        self.register_buffer("initial", self.flat().detach().clone(), persistent=False)

    def flat(self) -> torch.Tensor:
        """(n, 2 * layers * kv_heads * head_dim): what PEFT saves as `prompt_embeddings`."""
        return self.embedding if self.transform is None else self.transform(self.embedding)

    def kv(
        self, trunk: nn.Module, cache_arg: str, initial: bool = False
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer (keys, values), each (1, kv_heads, n, head_dim): trained, or the initial ones."""
        n = self.num_virtual_tokens
        flat = self.initial if initial else self.flat()
        x = flat.view(n, 2 * self.layers, self.kv_heads, self.head_dim).permute(1, 2, 0, 3)  # (2L, H, n, D)
        return [(x[2 * i].unsqueeze(0), x[2 * i + 1].unsqueeze(0)) for i in range(self.layers)]

    @torch.no_grad()
    def load_kv(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Start from per-layer (keys, values), each (1, kv_heads, n, head_dim): the inverse of `kv`."""
        x = torch.stack([t[0] for pair in kv for t in pair])  # (2L, H, n, D)
        self.embedding.copy_(x.permute(2, 0, 1, 3).reshape(self.num_virtual_tokens, -1))
        self.mark_initial()

    @torch.no_grad()
    def load_flat(self, flat: torch.Tensor) -> None:
        """Load a saved (computed) prefix; the projection MLP, if any, is dropped."""
        self.transform = None
        self.embedding = nn.Parameter(flat.to(self.embedding.device, torch.float32).clone())
        self.mark_initial()


def virtual_tokens(model: nn.Module, method: str) -> VirtualTokens:
    """The VirtualTokens holder of the model's trunk, created (and the hook registered) on first use."""
    trunk = trunk_of(model)
    holder = getattr(trunk, "virtual_tokens", None)
    if holder is None:
        holder = VirtualTokens(trunk, method)
        trunk.virtual_tokens = holder
    elif holder.method != method:
        raise ValueError(f"this model already has {holder.method} adapters; cannot add {method} ones")
    return holder


def inject(model: nn.Module, cfg: PrefixConfig, name: str, tokenizer=None) -> int:
    trunk = trunk_of(model)
    param = next(model.parameters())
    holder = getattr(trunk, "virtual_tokens", None)
    if holder is not None:  # read the plain model, without the prefixes already there
        holder.disabled, was = True, holder.disabled
    try:
        layout = kv_layout(trunk)
        encoder = PrefixEncoder(model.config, cfg, param, layout)
        if cfg.init_text:
            ids = text_ids(tokenizer, cfg.init_text, cfg.num_virtual_tokens, "peft.prefix.init_text")
            with torch.no_grad():
                was_training = trunk.training
                trunk.eval()
                try:
                    kv = record_kv(
                        trunk, cache_arg(trunk), input_ids=torch.tensor([ids], device=param.device)
                    )
                finally:
                    trunk.train(was_training)
            encoder.load_kv([(k.float(), v.float()) for k, v in kv])
    finally:
        if holder is not None:
            holder.disabled = was
    virtual_tokens(model, "prefix").encoders[name] = encoder
    return 1
