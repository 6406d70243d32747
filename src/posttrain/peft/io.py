"""Adapter-only checkpoints in PEFT's on-disk format (plus one format of ours for bottleneck adapters).

A directory holds `adapter_config.json` and `adapter_model.safetensors`:

    LORA / PREFIX_TUNING / PROMPT_TUNING: PEFT's own config fields and tensor names, so that
        `peft.PeftModel.from_pretrained(base, dir)` loads what posttrain saved, and posttrain loads PEFT's.
        LoRA: base_model.model.<module>.lora_A.weight / lora_B.weight / lora_magnitude_vector (DoRA);
        prefix and prompt: prompt_embeddings, (n, 2*layers*kv_heads*head_dim) resp. (n, hidden).
    POSTTRAIN_BOTTLENECK (ours): base_model.model.<block>.adapter_down.{weight,bias}, adapter_up.*
modules_to_save are stored as base_model.model.<module>.<param>, as PEFT does; so are heads outside the model (a
reward model's `score`, listed in modules_to_save with task_type SEQ_CLS) and, when tokens were added since the
base was loaded, the resized embedding and untied LM head (PEFT's `save_embedding_layers="auto"`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from posttrain.peft import tokens
from posttrain.peft.api import apply_peft, peft_configs
from posttrain.peft.base import Tuner, trunk_of, tuners
from posttrain.peft.config import AdapterConfig, LoraConfig, PeftConfig, PrefixConfig, PromptConfig
from posttrain.peft.lora import LoraLinear
from posttrain.peft.virtual import num_layers

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
LOADED_VOCAB_ATTR = "_posttrain_loaded_vocab"
"""Model attribute set by `posttrain.models.load_model`: embedding rows as loaded (to tell when tokens were added)."""
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
        (rf"\.trainable_tokens_delta\.{n}$", ".trainable_tokens_delta"),
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
    rows = tokens.peft_indices(model, name)
    if rows is not None:  # PEFT's field (LoRA reads it; posttrain reads it for every method)
        base["trainable_token_indices"] = rows
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


def _base_vocab(model: nn.Module) -> int | None:
    """Rows of the input embedding of the checkpoint the model was loaded from (None when unknown)."""
    rows = model.__dict__.get(LOADED_VOCAB_ATTR)
    if rows:
        return rows
    config = Path(getattr(model, "name_or_path", "") or "_") / "config.json"
    if config.is_file():
        raw = json.loads(config.read_text())
        return (raw.get("text_config") or raw).get("vocab_size")
    return None


def _embedding_names(model: nn.Module) -> list[str]:
    """Dotted names of the input embedding and of an untied output embedding (module paths)."""
    if not hasattr(model, "get_input_embeddings"):
        return []
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    found = {id(m): n for n, m in model.named_modules() if m is emb or m is head}
    names = [found[id(emb)]] if emb is not None and id(emb) in found else []
    if (
        head is not None
        and id(head) in found
        and getattr(head, "weight", None) is not getattr(emb, "weight", None)
    ):
        names.append(found[id(head)])
    return names


def _embedding_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The embedding (and untied LM head) weights when the vocabulary was resized since loading (added tokens), as
    PEFT's `save_embedding_layers="auto"` stores them: `base_model.model.<module>.weight`."""
    base = _base_vocab(model)
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    plain = lambda m: not isinstance(m, Tuner) or isinstance(m, tokens.TrainableTokens)  # noqa: E731
    if base is None or emb is None or not plain(emb) or emb.weight.shape[0] == base:
        return {}
    out = {}
    for name in _embedding_names(model):
        module = model.get_submodule(name)
        if plain(module):  # a modules_to_save copy is saved as such; trained token rows on their own
            out[f"{PREFIX}{name}.weight"] = module.weight
    return out


def save_adapter(
    model: nn.Module,
    directory: str | Path,
    adapter_name: str = "default",
    heads: dict[str, dict[str, torch.Tensor]] | None = None,
    task_type: str = "CAUSAL_LM",
) -> Path:
    """Write adapter `adapter_name` to `directory`; returns the directory. `heads` are modules that live outside
    `model` (a reward model's `score`): written as PEFT writes `modules_to_save` (`base_model.model.<name>.<param>`,
    the name listed in `modules_to_save`), so `peft` loads them onto a model that has them (`task_type`, e.g.
    SEQ_CLS). Resized embeddings are stored too (see `_embedding_tensors`)."""
    configs = peft_configs(model)
    if adapter_name not in configs:
        raise ValueError(f"no adapter {adapter_name!r} to save (this model has {sorted(configs) or 'none'})")
    cfg = configs[adapter_name]
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    tensors = {file_key: state[key] for key, file_key in _key_map(model, adapter_name).items()}
    tensors |= _embedding_tensors(model)
    for head, sd in (heads or {}).items():
        tensors |= {f"{PREFIX}{head}.{k}": v for k, v in sd.items()}
    encoder = _encoder(model, adapter_name)
    if encoder is not None:
        tensors["prompt_embeddings"] = encoder.flat() if cfg.method == "prefix" else encoder.embedding
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(out / WEIGHTS_FILE))
    meta = _config_json(model, cfg, adapter_name) | {"task_type": task_type}
    if heads:
        meta["modules_to_save"] = [*(meta["modules_to_save"] or []), *heads]
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def read_heads(directory: str | Path, names: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    """The state dicts of `heads` saved with `save_adapter(..., heads=...)` ({} for a name not in the file)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(Path(directory) / WEIGHTS_FILE)).items():
        for name in names:
            if key.startswith(f"{PREFIX}{name}."):
                out.setdefault(name, {})[key[len(f"{PREFIX}{name}.") :]] = value
    return out


def _raw_config(directory: str | Path) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no adapter config here (expected a PEFT-format adapter directory)")
    return json.loads(path.read_text(encoding="utf-8"))


def _token_rows(raw: dict, path: Path) -> tuple[list[int], list[int] | None] | None:
    """(embedding ids, untied head ids or None) from PEFT's `trainable_token_indices` (a list, or a dict keyed by
    module suffix), or None when the adapter has none."""
    rows = raw.get("trainable_token_indices")
    if not rows:
        return None
    if isinstance(rows, list):
        return [int(i) for i in rows], None
    if isinstance(rows, dict):
        embed = next((v for k, v in rows.items() if "embed" in k), None)
        head = next((v for k, v in rows.items() if "embed" not in k), None)
        if embed is not None:
            return [int(i) for i in embed], None if head is None else [int(i) for i in head]
    raise ValueError(f"{path}: field 'trainable_token_indices' must list token ids, got {rows!r}")


def read_config(directory: str | Path, heads: tuple[str, ...] = ()) -> PeftConfig:
    """The PeftConfig an adapter directory was saved with (PEFT's or ours); `heads` are left out of its
    modules_to_save (they belong to a model around this one, see `save_adapter`)."""
    path = Path(directory) / CONFIG_FILE
    raw = _raw_config(directory)
    kind = raw.get("peft_type")
    keep = [m for m in raw.get("modules_to_save") or [] if m not in heads]
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
    model: nn.Module,
    directory: str | Path,
    adapter_name: str = "default",
    trainable: bool = False,
    heads: tuple[str, ...] = (),
) -> nn.Module:
    """Add the adapter saved in `directory` to `model` as `adapter_name` and make it active. Stored embedding rows
    (added tokens) resize the model's embeddings first and replace them; `heads` (see `save_adapter`) are left in
    the file for `read_heads`."""
    cfg = read_config(directory, heads)
    tensors = load_file(str(Path(directory) / WEIGHTS_FILE))
    for name in heads:
        tensors = {k: v for k, v in tensors.items() if not k.startswith(f"{PREFIX}{name}.")}
    _load_embeddings(model, tensors, directory, cfg.modules_to_save)
    apply_peft(model, cfg, adapter_name)
    rows = _token_rows(_raw_config(directory), Path(directory) / CONFIG_FILE)
    if rows is not None:
        tokens.inject(model, rows[0], adapter_name, head_indices=rows[1])
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


def _load_embeddings(
    model: nn.Module, tensors: dict[str, torch.Tensor], directory, modules_to_save: list[str]
) -> None:
    """Resize the model's embeddings to stored embedding rows and copy them in (popping them from `tensors`); an
    embedding listed in modules_to_save is the adapter's own trained copy and is left for it."""
    own = lambda name: any(name == m or name.endswith("." + m) for m in modules_to_save)  # noqa: E731
    keys = {f"{PREFIX}{name}.weight": name for name in _embedding_names(model) if not own(name)}
    stored = {k: tensors.pop(k) for k in list(tensors) if k in keys}
    if not stored:
        return
    rows = next(iter(stored.values())).shape[0]
    if model.get_input_embeddings().weight.shape[0] != rows:
        model.resize_token_embeddings(rows, mean_resizing=False)
        keys = {f"{PREFIX}{name}.weight": name for name in _embedding_names(model) if not own(name)}
    for key, value in stored.items():
        _copy(model.get_submodule(keys[key]).weight, value, key, directory)


def _copy(dst: torch.Tensor, src: torch.Tensor, key: str, directory) -> None:
    if dst.shape != src.shape:
        raise ValueError(
            f"{directory}/{WEIGHTS_FILE}: tensor {key!r} has shape {tuple(src.shape)}, "
            f"the model expects {tuple(dst.shape)}"
        )
    dst.copy_(src.to(dst.dtype))


__all__ = ["save_adapter", "load_adapter", "read_config", "read_heads"]
