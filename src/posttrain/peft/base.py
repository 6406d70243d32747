"""What every injected posttrain module shares: named adapters, one active, a switch to turn them off.

A `Tuner` is a module that posttrain put into a Hugging Face model. LoRA and bottleneck wrappers replace an
existing module and keep it as `base_layer`; prefix and prompt tuning add one `VirtualTokens` module to the
trunk. Functions that act on "the adapters of a model" simply walk `model.modules()` for Tuners, so there is
no registry to keep in sync.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Iterator

import torch
from torch import nn

from posttrain.errors import UserError


class Tuner(nn.Module, abc.ABC):
    """Base of every posttrain adapter module. `active` names the adapter in use; `disabled` gives the base"""

    method: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.active = "default"
        self.disabled = False

    @abc.abstractmethod
    def adapter_names(self) -> list[str]:
        """Names of the adapters this module holds."""

    @abc.abstractmethod
    def adapter_parameters(self, name: str) -> Iterator[nn.Parameter]:
        """The trainable parameters of adapter `name` in this module."""


def tuners(model: nn.Module) -> list[Tuner]:
    return [m for m in model.modules() if isinstance(m, Tuner)]


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted `name` (e.g. 'model.layers.0.mlp')."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    """Adapters train in fp32 even on a bf16/fp16 base (like PEFT's autocast_adapter_dtype), and on a quantised
    one (a 4-bit weight is stored as uint8 codes, an 8-bit one as int8)."""
    if not weight.is_floating_point() or weight.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return weight.dtype


def trunk_of(model: nn.Module) -> nn.Module:
    """The decoder stack without the LM head: the one module the objectives and the model's forward both call."""
    from posttrain.modeling import trunk

    return trunk(model)


class ModulesToSave(Tuner):
    """A base module trained fully: a trainable copy per adapter name; the frozen original serves `disable`.

    Key names follow PEFT's ModulesToSaveWrapper: `<name>.modules_to_save.<adapter>.weight`.
    """

    method = "modules_to_save"

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.original_module = base_layer
        self.modules_to_save = nn.ModuleDict()

    def add(self, name: str) -> None:
        from posttrain.quant import quantized_linears

        if quantized_linears(self.original_module):
            raise UserError(
                "peft.modules_to_save: a quantised layer cannot be trained whole (model.quantization keeps the"
                " base frozen); train it with LoRA (peft.lora.target_modules) or load the model unquantised"
            )
        clone = copy.deepcopy(self.original_module)
        clone.requires_grad_(True)
        self.modules_to_save[name] = clone

    def adapter_names(self) -> list[str]:
        return list(self.modules_to_save)

    def adapter_parameters(self, name: str) -> Iterator[nn.Parameter]:
        return self.modules_to_save[name].parameters()

    @property
    def weight(self) -> torch.Tensor:
        return self._current().weight

    def _current(self) -> nn.Module:
        if self.disabled or self.active not in self.modules_to_save:
            return self.original_module
        return self.modules_to_save[self.active]

    def forward(self, *args, **kwargs):
        return self._current()(*args, **kwargs)


def wrap_modules_to_save(model: nn.Module, suffixes: list[str], name: str) -> int:
    """Wrap every module whose dotted name ends with one of `suffixes`; returns how many were wrapped."""
    found = 0
    for mod_name, module in list(model.named_modules()):
        if not any(mod_name == s or mod_name.endswith("." + s) for s in suffixes):
            continue
        if isinstance(module, ModulesToSave):
            module.add(name)
        elif not any(isinstance(m, Tuner) for m in module.modules()):
            wrapper = ModulesToSave(module)
            wrapper.add(name)
            set_module(model, mod_name, wrapper)
        else:
            continue
        found += 1
    if suffixes and not found:
        raise ValueError(f"peft.modules_to_save: no module matches {suffixes}")
    return found
