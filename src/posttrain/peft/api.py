"""apply_peft and the switches every objective uses: disable, set, merge, count.

model = apply_peft(model, PeftConfig(method="lora"))  # base frozen, LoRA on every linear but the head
with disable_adapters(model):                         # exactly the base: the DPO/PPO reference
    ref_logits = model(ids).logits
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from posttrain.peft import adapter, lora, prefix, prompt, tokens
from posttrain.peft.base import ModulesToSave, Tuner, set_module, tuners, wrap_modules_to_save
from posttrain.peft.config import PeftConfig
from posttrain.peft.virtual import VirtualTokens
from posttrain.quant import logical_numel

# method -> injector(model, cfg: PeftConfig, adapter_name, tokenizer) -> modules touched
INJECTORS = {
    "lora": lambda m, c, n, t: lora.inject(m, c.lora, n),
    "adapter": lambda m, c, n, t: adapter.inject(m, c.adapter, n),
    "prefix": lambda m, c, n, t: prefix.inject(m, c.prefix, n, t),
    "prompt": lambda m, c, n, t: prompt.inject(m, c.prompt, n, t),
}
CONFIG_ATTR = "posttrain_peft_config"  # model attribute: {adapter name: PeftConfig}


def apply_peft(
    model: nn.Module, cfg: PeftConfig, adapter_name: str = "default", tokenizer=None, template: str = "auto"
) -> nn.Module:
    """Inject adapter `adapter_name`, make it active: base frozen, adapter params, modules_to_save and trainable
    token rows train.

    `method=none` returns the model unchanged with every parameter trainable. `tokenizer` is needed for prompt
    and prefix tuning initialised from text and for `trainable_tokens` (with the chat `template` training uses). Calling it
    again with another name adds a second adapter.
    """
    if cfg.method == "none":
        if cfg.trainable_tokens:
            raise ValueError(
                "peft.trainable_tokens: full fine-tuning (peft.method=none) trains every row already"
            )
        model.requires_grad_(True)
        return model
    if cfg.method not in INJECTORS:
        raise ValueError(f"peft.method must be one of none | {' | '.join(INJECTORS)}, got {cfg.method!r}")
    configs = getattr(model, CONFIG_ATTR, None) or {}
    if adapter_name in configs:
        raise ValueError(f"adapter {adapter_name!r} already exists on this model")
    if not configs:
        model.requires_grad_(False)
    INJECTORS[cfg.method](model, cfg, adapter_name, tokenizer)
    if cfg.modules_to_save:
        wrap_modules_to_save(model, cfg.modules_to_save, adapter_name)
    if cfg.trainable_tokens:
        tokens.inject(model, tokens.resolve(cfg.trainable_tokens, tokenizer, template), adapter_name)
    configs[adapter_name] = cfg
    setattr(model, CONFIG_ATTR, configs)
    for t in tuners(model):
        if adapter_name in t.adapter_names():
            for p in t.adapter_parameters(adapter_name):
                p.requires_grad_(True)
    set_adapter(model, adapter_name)
    return model


def peft_configs(model: nn.Module) -> dict[str, PeftConfig]:
    return getattr(model, CONFIG_ATTR, None) or {}


def has_adapters(model: nn.Module) -> bool:
    return bool(tuners(model))


def adapter_method(model: nn.Module) -> str:
    """The method of the active adapter: lora | adapter | prefix | prompt, or none."""
    configs = peft_configs(model)
    active = next((t.active for t in tuners(model)), None)
    return configs[active].method if active in configs else "none"


def set_adapter(model: nn.Module, name: str) -> None:
    """Make adapter `name` the one every wrapped module uses."""
    ts = tuners(model)
    if not any(name in t.adapter_names() for t in ts):
        raise ValueError(f"no adapter named {name!r}; this model has {sorted(peft_configs(model))}")
    merged = [t for t in ts if isinstance(t, lora.LoraLinear) and t.merged not in (None, name)]
    if merged:
        raise ValueError(f"adapter {merged[0].merged!r} is merged; unmerge_adapters(model) before switching")
    for t in ts:
        t.active = name


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the model computes exactly the base model (merged LoRA is unmerged meanwhile)."""
    with _switched(model, keep_virtual=False):
        yield model


@contextlib.contextmanager
def reference_policy(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the model computes the policy it was when its adapters were created (or loaded): the
    reference DPO and PPO hold the policy near. LoRA, bottleneck adapters and modules_to_save start as the
    identity, so they are switched off; prefix and prompt tuning start as virtual tokens (random or text
    embeddings), which change the outputs from the first step, so their initial values are used."""
    with _switched(model, keep_virtual=True):
        yield model


@contextlib.contextmanager
def _switched(model: nn.Module, keep_virtual: bool) -> Iterator[None]:
    ts = tuners(model)
    merged = [t for t in ts if isinstance(t, lora.LoraLinear) and t.merged is not None]
    for t in merged:
        t.unmerge()
    before = [(t.disabled, getattr(t, "initial", None)) for t in ts]
    for t in ts:
        if keep_virtual and isinstance(t, VirtualTokens):
            t.initial = True
        else:
            t.disabled = True
    try:
        yield
    finally:
        for t, (disabled, initial) in zip(ts, before):
            t.disabled = disabled
            if isinstance(t, VirtualTokens):
                t.initial = initial
        for t in merged:
            t.merge()


def _lora_layers(model: nn.Module) -> list[lora.LoraLinear]:
    kept = (lora.LoraLinear, ModulesToSave, tokens.TrainableTokens)  # the last two are whole weights or rows
    others = {t.method for t in tuners(model) if not isinstance(t, kept)}
    if others:
        raise ValueError(
            f"only LoRA can be merged into the weights; this model has {sorted(others)} adapters"
        )
    return [t for t in tuners(model) if isinstance(t, lora.LoraLinear)]


def merge_adapters(model: nn.Module) -> None:
    """Fold the active LoRA adapter into the base weights (idempotent; unmerge_adapters undoes it exactly)."""
    for t in _lora_layers(model):
        t.merge(keep_original=True)


def unmerge_adapters(model: nn.Module) -> None:
    for t in _lora_layers(model):
        t.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the active LoRA adapter and put the plain base modules back: a model with no posttrain inside."""
    active = next((t.active for t in tuners(model)), None)
    tokens.unwrap(model, active)  # trained token rows written into the embedding (and head)
    for name, module in list(model.named_modules()):
        if isinstance(module, lora.LoraLinear):
            module.merge(keep_original=False)
            set_module(model, name, module.base_layer)
        elif isinstance(module, ModulesToSave):
            set_module(model, name, module._current())
        elif isinstance(module, Tuner):
            raise ValueError(f"only LoRA can be merged into the weights; found a {module.method} adapter")
    if hasattr(model, CONFIG_ATTR):
        delattr(model, CONFIG_ATTR)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once, a 4-bit weight as its logical size."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(logical_numel(p) for p in params)


def trainable_report(model: nn.Module) -> str:
    trainable, total = count_parameters(model)
    return (
        f"trainable params: {trainable:,} || all params: {total:,} || "
        f"trainable%: {100 * trainable / max(total, 1):.2f}"
    )
