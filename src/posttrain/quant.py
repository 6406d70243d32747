"""Quantised bases through bitsandbytes (QLoRA, LLM.int8()): what to ask transformers for, and how to read back the
weights a quantised layer computes with.

    qc = bnb_config("nf4", double_quant=True, compute_dtype=torch.bfloat16)   # a BitsAndBytesConfig (None: "none")
    is_quantized(layer)            # a bitsandbytes Linear4bit / Linear8bitLt
    w = dequantized_weight(layer)  # (out, in) float: what the layer multiplies by, the QLoRA adapter's base
    dequantize(model)              # every quantised linear replaced by an nn.Linear holding that weight

A 4-bit layer stores W as NF4 (or FP4) codes in blocks of 64 with one absmax each (double quantisation stores the
absmaxes in 8 bits too) and dequantises a block to `compute_dtype` for every matmul; an int8 layer stores W's rows as
int8 with one scale per row. bitsandbytes >= 0.45 runs both forward and backward on CPU, so everything here is
tested without a GPU. Dequantising is exact in the sense that matters for an adapter trained on the quantised base:
`dequantize(model)` computes what the quantised model computed (to the kernel's rounding), not the original weights.
"""

from __future__ import annotations

import torch
from torch import nn

from posttrain.errors import UserError

QUANTIZATIONS = ("none", "nf4", "fp4", "int8")
INSTALL = "pip install 'posttrain[qlora]'"


def bitsandbytes():
    """The bitsandbytes module, or one UserError naming the extra that installs it."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise UserError(f"model.quantization needs bitsandbytes, which is not installed: {INSTALL}") from None
    return bnb


def bnb_config(quantization: str, double_quant: bool = True, compute_dtype: torch.dtype = torch.float32):
    """transformers' BitsAndBytesConfig for `quantization` (nf4 | fp4 | int8), None for "none". The LM head and
    the embeddings stay in the model dtype (transformers keeps the output embedding unquantised)."""
    if quantization == "none":
        return None
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be {' | '.join(QUANTIZATIONS)}, got {quantization!r}")
    bitsandbytes()
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=torch.uint8,
    )


def is_quantized(module: nn.Module) -> bool:
    """A bitsandbytes quantised linear (Linear4bit, Linear8bitLt), told by its weight's class, without importing it."""
    w = getattr(module, "weight", None)
    return isinstance(module, nn.Linear) and type(w).__name__ in ("Params4bit", "Int8Params")


def logical_numel(p: torch.Tensor) -> int:
    """How many weights a parameter holds: a 4-bit one packs two (or more, with a wider storage dtype) per element."""
    if type(p).__name__ == "Params4bit":
        return p.numel() * p.element_size() * 2
    return p.numel()


def quantized_linears(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if is_quantized(m)]


def describe(model: nn.Module) -> str | None:
    """One line on what was quantised, None for an unquantised model. MoE experts that transformers stores as 3-D
    parameter tensors (Mixtral, Qwen3-MoE, gpt-oss) are not linears and stay in the model dtype: the share says so."""
    names = quantized_linears(model)
    if not names:
        return None
    quantised = sum(logical_numel(model.get_submodule(n).weight) for n in names)
    total = sum(logical_numel(p) for p in model.parameters())
    return (
        f"quantised ({model_quantization(model)}): {len(names)} linear layers holding {100 * quantised / total:.1f}%"
        " of the parameters; the rest (embeddings, norms, LM head, any MoE expert tensors) in the model dtype"
    )


def model_quantization(model: nn.Module) -> str:
    """ "nf4" | "fp4" | "int8" for a model loaded quantised, else "none" (from transformers' record of it)."""
    qc = getattr(getattr(model, "config", None), "quantization_config", None)
    if qc is None or not quantized_linears(model):
        return "none"
    qc = qc if isinstance(qc, dict) else qc.to_dict()
    if qc.get("load_in_8bit"):
        return "int8"
    return str(qc.get("bnb_4bit_quant_type", "nf4"))


def one_kernel(model: nn.Module) -> nn.Module:
    """Make every 4-bit layer compute the same way in training and in inference (in place; returned).

    On a CPU with AVX512-BF16, bitsandbytes switches a Linear4bit to a fused kernel the first time it runs in eval
    mode without gradients: it repacks the weight in place and multiplies in bf16, while a forward with gradients
    dequantises to `compute_dtype` and multiplies there. Rollout log-probs, the reference model and evaluation
    (no grad) would then disagree with the training forward (the policy), so PPO's KL to the reference was not 0 at
    step 0, and repacking back (for saving) re-quantises the block constants. posttrain keeps the one path."""
    for m in model.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
    return model


@torch.no_grad()
def dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """The (out, in) weight a quantised linear computes with, in fp32; a plain linear's own weight."""
    w = layer.weight
    kind = type(w).__name__
    if kind == "Params4bit":
        import bitsandbytes.functional as F

        if getattr(
            w.quant_state, "packing_format_for_cpu", False
        ):  # repacked by bitsandbytes (see one_kernel)
            w.data, w.quant_state = F._convert_weight_packed_for_cpu_inverse(w.data, w.quant_state)

        return F.dequantize_4bit(w.data, w.quant_state).float().reshape(layer.out_features, layer.in_features)
    if kind == "Int8Params":
        scb = getattr(w, "SCB", None)
        if scb is None:
            scb = getattr(layer.state, "SCB", None)
        if scb is None:  # not yet quantised (still on the host before .to(cuda)): the weight is float
            return w.data.float()
        return w.data.float() * (scb.float().unsqueeze(1) / 127.0)
    return w.detach().float()


def dequantize(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Replace every quantised linear by an nn.Linear holding `dequantized_weight` in `dtype` (in place; returned),
    and drop the quantisation record from the config, so the model saves and loads as a plain one."""
    for name in quantized_linears(model):
        old = model.get_submodule(name)
        new = nn.Linear(
            old.in_features, old.out_features, bias=old.bias is not None, device=old.weight.device
        )
        new.weight.data = dequantized_weight(old).to(dtype)
        if old.bias is not None:
            new.bias.data = old.bias.detach().to(dtype)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    for attr in (
        "is_quantized",
        "is_loaded_in_4bit",
        "is_loaded_in_8bit",
        "quantization_method",
        "hf_quantizer",
    ):
        if attr in model.__dict__:
            delattr(model, attr)
    return model.to(dtype)


def weight_bytes(model: nn.Module) -> int:
    """Bytes the model's parameters and buffers take (a 4-bit weight counts its packed bytes and its quantisation
    constants: block absmaxes, their own constants under double quantisation, the code book; shared ones once)."""
    seen: set[int] = set()

    def size(t) -> int:
        if not torch.is_tensor(t) or t.data_ptr() in seen:
            return 0
        seen.add(t.data_ptr())
        return t.numel() * t.element_size()

    total = sum(size(t) for t in model.parameters()) + sum(size(t) for t in model.buffers())
    for m in model.modules():
        state = getattr(getattr(m, "weight", None), "quant_state", None)
        while state is not None:
            total += size(getattr(state, "absmax", None)) + size(getattr(state, "code", None))
            state = getattr(state, "state2", None)
    return total
