"""LoRA (Hu et al. 2021): y = W x + s * B A x, with A (r x in), B (out x r) zero-initialised, s = alpha / r.

rsLoRA scales by alpha / sqrt(r). DoRA (Liu et al. 2024) rescales each output row of W + s B A to a learned
magnitude m: y = (m / ||W + s B A||_row) * (W + s B A) x, with the norm treated as a constant in the backward
pass (as in the paper and PEFT). GPT-2's Conv1D stores W transposed (in x out); the delta is transposed to
match.

On a quantised base (bitsandbytes Linear4bit / Linear8bitLt: QLoRA) the base layer computes W x from its codes and
the adapter adds s B A x in fp32; W itself, where DoRA or a merge needs it, is the dequantised weight the layer
computes with (`posttrain.quant.dequantized_weight`). Merging into a quantised layer is refused: the sum would have
to be quantised again, which is not the model that was trained (`posttrain merge` dequantises the base first).

Parameter names match PEFT (`q_proj.lora_A.default.weight`), so PEFT checkpoints map one-to-one.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from posttrain.errors import UserError
from posttrain.peft.base import Tuner, adapter_dtype, set_module
from posttrain.peft.config import LoraConfig
from posttrain.quant import dequantized_weight, is_quantized


class QuantizedMergeError(UserError, ValueError):
    """A LoRA merge was asked of a quantised base layer."""


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or _is_conv1d(module)


class LoraLinear(Tuner):
    """Wraps an nn.Linear or Conv1D (kept as `base_layer`) with named low-rank updates."""

    method = "lora"

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.fan_in_fan_out = _is_conv1d(base_layer)
        w = base_layer.weight
        self.in_features, self.out_features = (  # a 4-bit weight's shape is its packed codes': ask the layer
            (w.shape[0], w.shape[1])
            if self.fan_in_fan_out
            else (base_layer.in_features, base_layer.out_features)
        )
        self.quantized = is_quantized(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.lora_magnitude_vector = nn.ParameterDict()
        self.scaling: dict[str, float] = {}
        self.merged: str | None = None  # name of the adapter merged into base_layer.weight
        self.fused: torch.Tensor | None = None  # W + s B A while `fused_for_sampling` holds (no grad)

    def add(self, name: str, cfg: LoraConfig) -> None:
        w = self.base_layer.weight
        kw = dict(device=w.device, dtype=adapter_dtype(w))
        self.lora_A[name] = nn.Linear(self.in_features, cfg.r, bias=False, **kw)
        self.lora_B[name] = nn.Linear(cfg.r, self.out_features, bias=False, **kw)
        nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[name].weight)  # step 0 equals the base
        self.lora_dropout[name] = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.scaling[name] = cfg.alpha / (math.sqrt(cfg.r) if cfg.rslora else cfg.r)
        if cfg.dora:
            self.lora_magnitude_vector[name] = nn.Parameter(
                self._row_norm(self._weight().float()).to(kw["dtype"])
            )

    def adapter_names(self) -> list[str]:
        return list(self.lora_A)

    def adapter_parameters(self, name: str) -> Iterator[nn.Parameter]:
        yield from self.lora_A[name].parameters()
        yield from self.lora_B[name].parameters()
        if name in self.lora_magnitude_vector:
            yield self.lora_magnitude_vector[name]

    # ---- weights in (out, in) layout whatever the base layer stores
    def _weight(self) -> torch.Tensor:
        if self.quantized:
            return dequantized_weight(self.base_layer)
        w = self.base_layer.weight
        return w.T if self.fan_in_fan_out else w

    @staticmethod
    def _row_norm(w: torch.Tensor) -> torch.Tensor:
        return torch.linalg.norm(w, dim=1)  # (out,)

    def delta(self, name: str) -> torch.Tensor:
        """s * B @ A in (out, in) layout, fp32."""
        return self.scaling[name] * (self.lora_B[name].weight.float() @ self.lora_A[name].weight.float())

    def merged_weight(self, name: str) -> torch.Tensor:
        """The (out, in) weight that computes base + adapter `name` in one matmul (DoRA included)."""
        w = self._weight().float() + self.delta(name)
        if name in self.lora_magnitude_vector:
            w = w * (self.lora_magnitude_vector[name].float() / self._row_norm(w)).unsqueeze(1)
        return w

    # ---- forward
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.fused is not None:
            return F.linear(x, self.fused, self.base_layer.bias)
        result = self.base_layer(x, *args, **kwargs)
        name = self.active
        if self.disabled or self.merged is not None or name not in self.lora_A:
            return result
        A, B = self.lora_A[name], self.lora_B[name]
        h = self.lora_dropout[name](x.to(A.weight.dtype))
        lora = B(A(h)) * self.scaling[name]  # (..., out)
        if name in self.lora_magnitude_vector:
            lora = self._dora(h, lora, name)
        return result + lora.to(result.dtype)

    def _dora(self, h: torch.Tensor, lora: torch.Tensor, name: str) -> torch.Tensor:
        """Extra output of DoRA over the base: (m/||W+sBA|| - 1) W h + (m/||W+sBA||) s B A h."""
        w = self._weight().to(h.dtype)
        norm = self._row_norm(w + self.delta(name).to(h.dtype).detach()).detach()
        scale = self.lora_magnitude_vector[name] / norm  # (out,)
        return (scale - 1) * F.linear(h, w) + scale * lora

    # ---- merge / unmerge: the original weight is kept so that unmerge is bit-exact
    @torch.no_grad()
    def merge(self, keep_original: bool = True) -> None:
        if self.merged is not None or self.active not in self.lora_A:
            return
        if self.quantized:
            raise QuantizedMergeError(
                "cannot merge a LoRA adapter into a quantised base layer (the sum would be quantised again, which"
                " is not the trained model): merge with `posttrain merge`, which dequantises the base first"
            )
        w = self.base_layer.weight
        if keep_original:
            self.register_buffer("original_weight", w.detach().clone(), persistent=False)
        new = self.merged_weight(self.active)
        w.copy_((new.T if self.fan_in_fan_out else new).to(w.dtype))
        self.merged = self.active

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged is None:
            return
        if getattr(self, "original_weight", None) is None:
            raise RuntimeError(
                "this LoRA layer was merged without keeping the original weight; cannot unmerge"
            )
        self.base_layer.weight.copy_(self.original_weight)
        del self.original_weight
        self.merged = None

    def can_fuse(self) -> bool:
        """True when the active adapter can be folded into a float copy of the base weight."""
        w = self.base_layer.weight
        return (
            not self.disabled
            and self.merged is None
            and self.active in self.lora_A
            and w.is_floating_point()
            and not self.quantized
            and (type(self.base_layer) is nn.Linear or self.fan_in_fan_out)  # not another Linear subclass
        )


@contextlib.contextmanager
def fused_for_sampling(model: nn.Module) -> Iterator[int]:
    """Inside the block every LoRA layer computes x (W + s B A)^T in one matmul from a fused copy of its weight
    (the base weight is not touched, so nothing drifts), instead of W x + s B (A x): decoding a batch of 16 on CPU
    was 1.5x slower with the adapter's two extra matmuls per projection. For no-grad sampling only: dropout is
    skipped and the copy takes the targeted weights' memory once more. Yields how many layers were fused."""
    layers = [m for m in model.modules() if isinstance(m, LoraLinear) and m.can_fuse()]
    try:
        with torch.no_grad():
            for m in layers:
                m.fused = m.merged_weight(m.active).to(m.base_layer.weight.dtype)
        yield len(layers)
    finally:
        for m in layers:
            m.fused = None


_INTERNAL = {
    "base_layer",
    "lora_A",
    "lora_B",
    "adapter_down",
    "adapter_up",
    "modules_to_save",
    "original_module",
    "virtual_tokens",
}


def find_targets(model: nn.Module, target_modules: list[str] | str) -> list[str]:
    """Dotted names of the linears to wrap: name suffixes, a regex, or 'all-linear' (all but the head)."""
    all_linear = target_modules == "all-linear" or (
        isinstance(target_modules, list) and "all-linear" in target_modules
    )
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = []
    for name, module in model.named_modules():
        if not (is_linear(module) or isinstance(module, LoraLinear)) or _INTERNAL & set(name.split(".")):
            continue
        if all_linear:
            hit = module is not head and getattr(module, "base_layer", None) is not head
        elif isinstance(target_modules, str):
            hit = re.fullmatch(target_modules, name) is not None
        else:
            hit = any(name == t or name.endswith("." + t) for t in target_modules)
        if hit:
            names.append(name)
    return names


PEFT_FUSED_EXPERT_NAMES = {
    "mixtral": ("gate", "w1", "w2", "w3"),
    "qwen2_moe": ("gate", "gate_proj", "up_proj", "down_proj"),
}
"""Module names that `peft` (with transformers >= 5) reads, on MoE model types converted by the conversion pattern
named here, as the experts' fused parameters wherever they appear in an adapter config (transformers'
`_MODEL_TO_CONVERSION_PATTERN` maps deepseek_v3, qwen3_moe, ... to qwen2_moe)."""


def peft_reserved_names(model: nn.Module) -> tuple[str, ...]:
    """Leaf names a LoRA target of this model must not have for `peft` to load the adapter as it was trained."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    try:
        from transformers.conversion_mapping import _MODEL_TO_CONVERSION_PATTERN as patterns
    except ImportError:  # older transformers: peft converts nothing
        return ()
    pattern = "mixtral" if model_type == "mixtral" else patterns.get(model_type)
    return PEFT_FUSED_EXPERT_NAMES.get(pattern, ())


def _drop_reserved(model: nn.Module, targets: list[str], cfg: LoraConfig) -> list[str]:
    """Keep LoRA off dense linears that `peft` would re-read as fused experts (DeepSeek-V3's dense and shared
    MLPs are named like its experts): skipped under all-linear with a warning, refused when named explicitly."""
    reserved = peft_reserved_names(model)
    clash = [t for t in targets if t.rsplit(".", 1)[-1] in reserved]
    if not clash:
        return targets
    why = (
        f"peft reads {', '.join(reserved)} on {model.config.model_type} models as the fused mixture-of-experts "
        "weights, so a LoRA on the dense layers of that name would not load the same outside posttrain"
    )
    if "all-linear" not in cfg.target_modules:
        raise ValueError(f"peft.lora.target_modules: cannot target {clash[0]}: {why}")
    warnings.warn(
        f"peft.lora.target_modules=all-linear: skipping {len(clash)} layers ({clash[0]}, ...): {why}",
        stacklevel=4,
    )
    return [t for t in targets if t not in clash]


def untie_head(model: nn.Module) -> None:
    """Give an LM head that shares the input embedding matrix a copy of its own, so that merging a LoRA into the
    head cannot change the embeddings (with the matrix shared, the merged model's logits were 10.4 off)."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or embed is None or head.weight is not embed.weight:
        return
    warnings.warn(
        "LoRA on a tied LM head: the head gets its own copy of the embedding matrix (tie_word_embeddings=false), "
        "so that merging changes the head only",
        stacklevel=3,
    )
    head.weight = nn.Parameter(embed.weight.detach().clone(), requires_grad=False)
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.tie_word_embeddings = False


def inject(model: nn.Module, cfg: LoraConfig, name: str) -> int:
    """Wrap the target layers of `model` with adapter `name`; returns how many layers were wrapped."""
    targets = _drop_reserved(model, find_targets(model, cfg.target_modules), cfg)
    if not targets:
        raise ValueError(f"peft.lora.target_modules: no linear layer matches {cfg.target_modules}")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and any(model.get_submodule(t) is head for t in targets):
        untie_head(model)
    for mod_name in targets:
        module = model.get_submodule(mod_name)
        if not isinstance(module, LoraLinear):
            module = LoraLinear(module)
            set_module(model, mod_name, module)
        module.add(name, cfg)
    return len(targets)
