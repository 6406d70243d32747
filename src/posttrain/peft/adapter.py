"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021; He et al. 2022's parallel adapter).

An adapter is h + up(act(down(h))): down-projection to hidden / reduction_factor, a non-linearity, an
up-projection initialised at zero (so step 0 equals the base). Where it sits:

    houlsby   after the attention output and after the MLP output (before each residual add)
    pfeiffer  after the MLP output only
    parallel  beside the MLP: mlp(x) + up(act(down(x))), reading the MLP's input

The attention and MLP blocks of every decoder layer are found by name (self_attn / attn / attention, mlp /
feed_forward) or by class name ("...Attention", "...MLP"), and wrapped; nothing is re-declared.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from posttrain.peft.base import Tuner, adapter_dtype, set_module
from posttrain.peft.config import AdapterConfig

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn")
MLP_OUTPUT_NAMES = ("fc2",)
"""Layers whose MLP is inline (OPT: fc1 -> activation -> fc2, no MLP module): the adapter follows the output
projection, which is the MLP's output."""

# kind -> (wrap attention?, how the MLP adapter is placed)
PLACEMENTS = {"houlsby": (True, "after"), "pfeiffer": (False, "after"), "parallel": (False, "parallel")}


class Bottleneck(nn.Module):
    def __init__(self, hidden: int, cfg: AdapterConfig, like: torch.Tensor) -> None:
        super().__init__()
        if cfg.non_linearity not in ACTIVATIONS:
            raise ValueError(
                f"peft.adapter.non_linearity must be one of {sorted(ACTIVATIONS)}, got {cfg.non_linearity!r}"
            )
        size = max(1, hidden // cfg.reduction_factor)
        kw = dict(device=like.device, dtype=adapter_dtype(like))
        self.adapter_down = nn.Linear(hidden, size, **kw)
        self.act = ACTIVATIONS[cfg.non_linearity]()
        self.adapter_up = nn.Linear(size, hidden, **kw)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.adapter_up(self.act(self.adapter_down(h.to(self.adapter_down.weight.dtype)))).to(h.dtype)


class BottleneckWrapper(Tuner):
    """Wraps an attention or MLP block (kept as `base_layer`); adds the active bottleneck after/beside it."""

    method = "adapter"

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()
        self.placements: dict[str, str] = {}  # adapter name -> after | parallel

    def adapter_names(self) -> list[str]:
        return list(self.adapters)

    def adapter_parameters(self, name: str) -> Iterator[nn.Parameter]:
        return self.adapters[name].parameters()

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        out = self.base_layer(hidden_states, *args, **kwargs)
        if self.disabled or self.active not in self.adapters:
            return out
        adapter = self.adapters[self.active]
        # attention blocks return (output, weights, ...); the adapter acts on the output only
        first = out[0] if isinstance(out, tuple) else out
        first = first + adapter(hidden_states if self.placements[self.active] == "parallel" else first)
        return (first, *out[1:]) if isinstance(out, tuple) else first


def _blocks(layer: nn.Module) -> tuple[str | None, str | None, bool]:
    """(attention child name, MLP child name, whether that child is a whole MLP block) of a decoder layer; the
    MLP may be its output projection (MLP_OUTPUT_NAMES) when the layer computes its MLP inline."""
    attn = mlp = out_proj = None
    for name, child in layer.named_children():
        cls = type(child.base_layer if isinstance(child, BottleneckWrapper) else child).__name__
        if attn is None and (name in ATTENTION_NAMES or cls.endswith("Attention")):
            attn = name
        elif mlp is None and (name in MLP_NAMES or cls.endswith("MLP")):
            mlp = name
        elif name in MLP_OUTPUT_NAMES:
            out_proj = name
    if mlp is None and out_proj is not None and attn is not None:
        return attn, out_proj, False
    return attn, mlp, True


def inject(model: nn.Module, cfg: AdapterConfig, name: str) -> int:
    """Add bottleneck adapter `name` to every decoder layer; returns how many blocks were wrapped."""
    if cfg.kind not in PLACEMENTS:
        raise ValueError(f"peft.adapter.kind must be one of {sorted(PLACEMENTS)}, got {cfg.kind!r}")
    wrap_attention, mlp_placement = PLACEMENTS[cfg.kind]
    hidden = model.config.get_text_config().hidden_size
    like = next(model.parameters())
    wrapped = 0
    for layer_name, layer in list(model.named_modules()):
        attn, mlp, whole = _blocks(layer)
        if attn is None or mlp is None:
            continue
        if mlp_placement == "parallel" and not whole:
            raise ValueError(
                f"peft.adapter.kind=parallel reads the MLP's input, but {type(layer).__name__} computes its MLP "
                f"inline ({mlp} is its output projection, not a block); use kind=houlsby or kind=pfeiffer"
            )
        sites = [(mlp, mlp_placement)] + ([(attn, "after")] if wrap_attention else [])
        for child, placement in sites:
            module = getattr(layer, child)
            if not isinstance(module, BottleneckWrapper):
                module = BottleneckWrapper(module)
                set_module(model, f"{layer_name}.{child}" if layer_name else child, module)
            module.adapters[name] = Bottleneck(hidden, cfg, like)
            module.placements[name] = placement
            wrapped += 1
    if not wrapped:
        raise ValueError(
            "peft.method=adapter: found no decoder layer with an attention block and an MLP block"
        )
    return wrapped
