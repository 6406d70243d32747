"""Adapter-only checkpoints in PEFT's on-disk format (plus one format of ours for bottleneck adapters).

A directory holds `adapter_config.json` and `adapter_model.safetensors`:

    LORA / PREFIX_TUNING / PROMPT_TUNING: PEFT's own config fields and tensor names, so that
        `peft.PeftModel.from_pretrained(base, dir)` loads what posttrain saved, and posttrain loads PEFT's.
        LoRA: base_model.model.<module>.lora_A.weight / lora_B.weight / lora_magnitude_vector (DoRA);
        prefix and prompt: prompt_embeddings, (n, 2*layers*kv_heads*head_dim) resp. (n, hidden).
    POSTTRAIN_BOTTLENECK (ours): base_model.model.<block>.adapter_down.{weight,bias}, adapter_up.*
modules_to_save are stored as base_model.model.<module>.<param>, as PEFT does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from posttrain.peft.api import apply_peft, peft_configs
from posttrain.peft.base import trunk_of, tuners
from posttrain.peft.config import AdapterConfig, LoraConfig, PeftConfig, PrefixConfig, PromptConfig
from posttrain.peft.lora import LoraLinear
from posttrain.peft.virtual import num_layers

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."
PEFT_TYPES = {
    "lora": "LORA",
    "prefix": "PREFIX_TUNING",
    "prompt": "PROMPT_TUNING",
    "adapter": "POSTTRAIN_BOTTLENECK",
}


def _file_key(key: str, name: str) -> str | None:
    """Our state-dict key -> the key in the file, or None when `key` is not part of adapter `name`."""
    n = re.escape(name)
    for pattern, repl in (
        (rf"\.(lora_A|lora_B)\.{n}\.", r".\1."),
        (rf"\.lora_magnitude_vector\.{n}$", ".lora_magnitude_vector"),
        (rf"\.modules_to_save\.{n}\.", "."),
        (rf"\.adapters\.{n}\.", "."),
    ):
        new, hits = re.subn(pattern, repl, key)
        if hits:
            return PREFIX + new
    return None


def _key_map(model: nn.Module, name: str) -> dict[str, str]:
    """{our key: file key} for the tensors of adapter `name` (LoRA, bottleneck, modules_to_save)."""
    out = {}
    for key in model.state_dict(keep_vars=True):
        file_key = _file_key(key, name)
        if file_key is not None:
            out[key] = file_key
    return out


def _encoder(model: nn.Module, name: str):
    holder = getattr(trunk_of(model), "virtual_tokens", None)
    return holder.encoders[name] if holder is not None and name in holder.encoders else None


def _config_json(model: nn.Module, cfg: PeftConfig, name: str) -> dict:
    c = model.config.get_text_config()
    base = {
        "peft_type": PEFT_TYPES[cfg.method],
        "task_type": "CAUSAL_LM",
        "inference_mode": True,
        "base_model_name_or_path": getattr(model, "name_or_path", None) or None,
        "modules_to_save": list(cfg.modules_to_save) or None,
        "revision": None,
    }
    layers, encoder = num_layers(model.config), _encoder(model, name)
    if cfg.method == "lora":
        wrapped = [m for m in model.modules() if isinstance(m, LoraLinear) and name in m.lora_A]
        lc, targets = cfg.lora, cfg.lora.target_modules
        if targets == "all-linear" or "all-linear" in targets:  # save what was resolved, as PEFT does
            targets = sorted(
                {
                    n.rsplit(".", 1)[-1]
                    for n, m in model.named_modules()
                    if isinstance(m, LoraLinear) and name in m.lora_A
                }
            )
        return base | {
            "r": lc.r,
            "lora_alpha": lc.alpha,
            "lora_dropout": lc.dropout,
            "target_modules": targets,
            "use_rslora": lc.rslora,
            "use_dora": lc.dora,
            "bias": "none",
            "init_lora_weights": True,
            "fan_in_fan_out": any(m.fan_in_fan_out for m in wrapped),
        }
    if cfg.method == "prefix":  # PEFT reads the prefix as (n, 2 * layers * heads * token_dim / heads)
        width = encoder.kv_heads * encoder.head_dim
        return base | {
            "num_virtual_tokens": cfg.prefix.num_virtual_tokens,
            "token_dim": width,
            "num_layers": encoder.layers,
            "num_attention_heads": encoder.kv_heads,
            "num_transformer_submodules": 1,
            "encoder_hidden_size": width,
            "prefix_projection": False,
        }
    if cfg.method == "prompt":
        return base | {
            "num_virtual_tokens": cfg.prompt.num_virtual_tokens,
            "token_dim": c.hidden_size,
            "num_layers": layers,
            "num_attention_heads": c.num_attention_heads,
            "num_transformer_submodules": 1,
            "prompt_tuning_init": "RANDOM",
            "prompt_tuning_init_text": None,
            "tokenizer_name_or_path": None,
        }
    a = cfg.adapter
    return base | {"kind": a.kind, "reduction_factor": a.reduction_factor, "non_linearity": a.non_linearity}


def save_adapter(
    model: nn.Module,
    directory: str | Path,
    adapter_name: str = "default",
) -> Path:
    """Write adapter `adapter_name` to `directory`; returns the directory."""
    configs = peft_configs(model)
    if adapter_name not in configs:
        raise ValueError(f"no adapter {adapter_name!r} to save (this model has {sorted(configs) or 'none'})")
    cfg = configs[adapter_name]
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    tensors = {file_key: state[key] for key, file_key in _key_map(model, adapter_name).items()}
    encoder = _encoder(model, adapter_name)
    if encoder is not None:
        tensors["prompt_embeddings"] = encoder.flat() if cfg.method == "prefix" else encoder.embedding
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(_config_json(model, cfg, adapter_name), indent=2) + "\n")
    return out


def read_config(directory: str | Path) -> PeftConfig:
    """The PeftConfig an adapter directory was saved with (PEFT's or ours)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no adapter config here (expected a PEFT-format adapter directory)")
    raw = json.loads(path.read_text())
    kind = raw.get("peft_type")
    keep = list(raw.get("modules_to_save") or [])
    if kind == "LORA":
        for fld in ("layers_to_transform", "rank_pattern", "alpha_pattern"):
            if raw.get(fld):
                raise ValueError(f"{path}: field {fld!r} is not supported by posttrain's LoRA")
        if raw.get("bias", "none") != "none":
            raise ValueError(f"{path}: field 'bias' must be 'none', got {raw['bias']!r}")
        lc = LoraConfig(
            r=raw["r"],
            alpha=raw["lora_alpha"],
            dropout=raw.get("lora_dropout", 0.0),
            target_modules=raw["target_modules"],
            rslora=raw.get("use_rslora", False),
            dora=raw.get("use_dora", False),
        )
        return PeftConfig(method="lora", lora=lc, modules_to_save=keep)
    if kind == "PREFIX_TUNING":
        return PeftConfig(
            method="prefix",
            prefix=PrefixConfig(num_virtual_tokens=raw["num_virtual_tokens"]),
            modules_to_save=keep,
        )
    if kind == "PROMPT_TUNING":
        return PeftConfig(
            method="prompt",
            prompt=PromptConfig(num_virtual_tokens=raw["num_virtual_tokens"]),
            modules_to_save=keep,
        )
    if kind == "POSTTRAIN_BOTTLENECK":
        ac = AdapterConfig(
            kind=raw["kind"], reduction_factor=raw["reduction_factor"], non_linearity=raw["non_linearity"]
        )
        return PeftConfig(method="adapter", adapter=ac, modules_to_save=keep)
    raise ValueError(
        f"{path}: field 'peft_type' {kind!r} is not supported (LORA | PREFIX_TUNING | PROMPT_TUNING | "
        "POSTTRAIN_BOTTLENECK)"
    )


@torch.no_grad()
def load_adapter(
    model: nn.Module, directory: str | Path, adapter_name: str = "default", trainable: bool = False
) -> nn.Module:
    """Add the adapter saved in `directory` to `model` as `adapter_name` and make it active."""
    cfg = read_config(directory)
    apply_peft(model, cfg, adapter_name)
    tensors = load_file(str(Path(directory) / WEIGHTS_FILE))
    wanted = {file_key: key for key, file_key in _key_map(model, adapter_name).items()}
    params = model.state_dict(keep_vars=True)
    for file_key, key in wanted.items():
        if file_key not in tensors:
            raise ValueError(f"{directory}/{WEIGHTS_FILE}: missing tensor {file_key!r}")
        _copy(params[key], tensors.pop(file_key), file_key, directory)
    encoder = _encoder(model, adapter_name)
    if encoder is not None:
        flat = tensors.pop("prompt_embeddings", None)
        if flat is None:
            raise ValueError(f"{directory}/{WEIGHTS_FILE}: missing tensor 'prompt_embeddings'")
        if cfg.method == "prefix":
            encoder.load_flat(flat)
        else:
            _copy(encoder.embedding, flat, "prompt_embeddings", directory)
            encoder.mark_initial()  # a loaded adapter is the starting policy of whatever trains it further
    if tensors:
        raise ValueError(f"{directory}/{WEIGHTS_FILE}: tensors not used by this model: {sorted(tensors)[:5]}")
    for t in tuners(model):
        if adapter_name in t.adapter_names():
            for p in t.adapter_parameters(adapter_name):
                p.requires_grad_(trainable)
    return model


def _copy(dst: torch.Tensor, src: torch.Tensor, key: str, directory) -> None:
    if dst.shape != src.shape:
        raise ValueError(
            f"{directory}/{WEIGHTS_FILE}: tensor {key!r} has shape {tuple(src.shape)}, "
            f"the model expects {tuple(dst.shape)}"
        )
    dst.copy_(src.to(dst.dtype))


__all__ = ["save_adapter", "load_adapter", "read_config"]
