"""Trainable token rows: a few rows of the embedding (and the LM head) train with any PEFT method.

    peft.trainable_tokens=[template]            # the special tokens the chat template writes (<|im_end|>, ...)
    peft.trainable_tokens=["<|eot_id|>"]        # or named tokens

Why: a base model that never saw its chat template's special tokens in pre-training keeps their embedding and
output rows at random initialisation. Full fine-tuning trains those rows; every PEFT method freezes them, so the
adapted model can only learn to emit `<|im_end|>` by turning its hidden states towards a random vector. Measured on
the demo's base: after 800 adapter steps the end-of-turn logit rose from -2.9 to 4.0 but still ranked 6th, and
p(<|im_end|>) after an answer was 0.004 where the data (and the fully tuned model) give 0.74-0.85, so the adapted
model ended its answers with a pleasantry. Training just those rows fixes it at a few hundred parameters.

The layout is PEFT's `trainable_token_indices` (`TrainableTokensWrapper`): the wrapped module keeps the original as
`token_adapter.base_layer` and the new rows as `token_adapter.trainable_tokens_delta.<adapter>` (the rows
themselves, initialised to the originals, so the model starts as the base). A tied LM head uses the embedding's
rows; an untied one gets rows of its own. LoRA adapters saved with them load in `peft` with the same logits.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from posttrain.peft.base import Tuner, set_module

TEMPLATE = "template"
"""`peft.trainable_tokens` entry meaning: the special tokens the tokenizer's chat template writes."""


class TokenRows(nn.Module):
    """The base layer and, per adapter, the replacement rows and the token ids they replace."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.trainable_tokens_delta = nn.ParameterDict()
        self.token_indices: dict[str, list[int]] = {}


class TrainableTokens(Tuner):
    """An embedding (or LM head) whose rows `token_indices[adapter]` come from `trainable_tokens_delta[adapter]`.

    `tied_to` (an embedding's TrainableTokens) makes a tied LM head read that embedding's rows; it holds no
    parameters of its own, as in PEFT (the tied copy is not in the state dict)."""

    method = "trainable_tokens"

    def __init__(self, base_layer: nn.Module, tied_to: TrainableTokens | None = None) -> None:
        super().__init__()
        self.token_adapter = TokenRows(base_layer)
        self._tied = [tied_to] if tied_to is not None else []  # a list: not a submodule

    @property
    def rows(self) -> TokenRows:
        return self._tied[0].token_adapter if self._tied else self.token_adapter

    @property
    def base_layer(self) -> nn.Module:
        return self.token_adapter.base_layer

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def add(self, name: str, indices: list[int]) -> None:
        if self._tied:
            return
        index = torch.tensor(indices, device=self.weight.device)
        rows = self.weight.detach()[index].clone().float()
        self.token_adapter.trainable_tokens_delta[name] = nn.Parameter(rows, requires_grad=True)
        self.token_adapter.token_indices[name] = list(indices)

    def adapter_names(self) -> list[str]:
        return list(self.rows.trainable_tokens_delta)

    def adapter_parameters(self, name: str) -> Iterator[nn.Parameter]:
        if self._tied or name not in self.token_adapter.trainable_tokens_delta:
            return iter(())
        return iter([self.token_adapter.trainable_tokens_delta[name]])

    def _active(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        rows = self.rows
        if self.disabled or self.active not in rows.trainable_tokens_delta:
            return None
        values = rows.trainable_tokens_delta[self.active]
        return torch.tensor(rows.token_indices[self.active], device=values.device), values

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        active = self._active()
        if active is None:
            return out
        index, values = active
        if isinstance(self.base_layer, nn.Embedding):
            slot = torch.full((self.weight.shape[0],), -1, dtype=torch.long, device=x.device)
            slot[index] = torch.arange(len(index), device=x.device)
            where = slot[x]  # (...,) row of each input id, -1 when it is not a trained token
            rows = F.embedding(where.clamp(min=0), values).to(out.dtype)
            scale = getattr(self.base_layer, "embed_scale", None)  # Gemma-style scaled embeddings
            if scale is not None:
                rows = rows * scale.to(rows.dtype)
            return torch.where((where >= 0).unsqueeze(-1), rows, out)
        logits = x.to(values.dtype) @ values.t()  # an LM head: the trained tokens' logits from their rows
        bias = getattr(self.base_layer, "bias", None)
        if bias is not None:
            logits = logits + bias[index].to(logits.dtype)
        return out.index_copy(-1, index, logits.to(out.dtype))

    def merged_weight(self, name: str) -> torch.Tensor:
        rows = self.rows
        index = torch.tensor(rows.token_indices[name], device=self.weight.device)
        return self.weight.detach().index_copy(
            0, index, rows.trainable_tokens_delta[name].detach().to(self.weight)
        )


def template_tokens(tokenizer, template: str = "auto") -> list[int]:
    """Ids of the special tokens (pad aside) in a user + assistant conversation rendered with `template`."""
    from posttrain.data.chat import render

    text = render(
        tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}], template
    )
    ids = set(tokenizer(text, add_special_tokens=False)["input_ids"])
    found = sorted(i for i in ids & set(tokenizer.all_special_ids) if i != tokenizer.pad_token_id)
    if not found:
        raise ValueError(
            f"peft.trainable_tokens=[template]: the chat template {template!r} writes no special token"
        )
    return found


def resolve(entries: list[str], tokenizer, template: str = "auto") -> list[int]:
    """`peft.trainable_tokens` entries (token strings or `template`) -> sorted token ids."""
    if tokenizer is None:
        raise ValueError("peft.trainable_tokens needs the tokenizer to find its tokens")
    ids: set[int] = set()
    for entry in entries:
        if entry == TEMPLATE:
            ids.update(template_tokens(tokenizer, template))
            continue
        found = tokenizer.convert_tokens_to_ids(entry)
        if found is None or found == tokenizer.unk_token_id:
            raise ValueError(f"peft.trainable_tokens: {entry!r} is not a token of this tokenizer")
        ids.add(int(found))
    return sorted(ids)


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def inject(model: nn.Module, indices: list[int], name: str, head_indices: list[int] | None = None) -> dict:
    """Wrap the input embedding (and an untied LM head) with TrainableTokens for adapter `name`; returns
    {module suffix: indices} as PEFT's `trainable_token_indices` records them."""
    from posttrain.peft.base import ModulesToSave

    embed = model.get_input_embeddings()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(embed, ModulesToSave) or isinstance(head, ModulesToSave):
        raise ValueError(
            "peft.trainable_tokens: the embedding is in modules_to_save, which trains all its rows"
        )
    if not isinstance(embed, TrainableTokens):
        embed_name = _module_name(model, embed)
        embed = TrainableTokens(embed)
        set_module(model, embed_name, embed)
    embed.add(name, indices)
    record = {"embed_tokens": list(indices)}
    if head is None:
        return record
    base_head = head.base_layer if isinstance(head, TrainableTokens) else head
    tied = base_head.weight is embed.weight
    if not isinstance(head, TrainableTokens):
        head_name = _module_name(model, head)
        head = TrainableTokens(head, tied_to=embed if tied else None)
        set_module(model, head_name, head)
    if not tied:
        head.add(name, head_indices if head_indices is not None else indices)
        record["lm_head"] = list(head.token_adapter.token_indices[name])
    return record


def peft_indices(model: nn.Module, name: str) -> list[int] | dict[str, list[int]] | None:
    """`trainable_token_indices` for adapter `name` as PEFT writes it: a list when the head is tied (or there is
    none), else {embedding suffix: ids, head suffix: ids}; None without trainable tokens."""
    embed = model.get_input_embeddings()
    if not isinstance(embed, TrainableTokens) or name not in embed.token_adapter.token_indices:
        return None
    ids = embed.token_adapter.token_indices[name]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, TrainableTokens) or head._tied or name not in head.token_adapter.token_indices:
        return list(ids)
    short = lambda m: _module_name(model, m).rsplit(".", 1)[-1]  # noqa: E731
    return {short(embed): list(ids), short(head): list(head.token_adapter.token_indices[name])}


def unwrap(model: nn.Module, name: str | None) -> None:
    """Write adapter `name`'s rows into the base weights (None: drop them) and put the base modules back."""
    wrappers = [(n, m) for n, m in model.named_modules() if isinstance(m, TrainableTokens)]
    for _, wrapper in wrappers:
        if name is not None and not wrapper._tied and name in wrapper.token_adapter.trainable_tokens_delta:
            with torch.no_grad():
                wrapper.weight.copy_(wrapper.merged_weight(name))
    for mod_name, wrapper in wrappers:
        set_module(model, mod_name, wrapper.base_layer)
