"""What a run leaves behind and how it is read back: the one place that writes and reads `final/` artefacts.

    save_final(model, tok, cfg, "runs/sft/final")    # full model dir, or an adapter dir for PEFT runs
    model, tok = load_for_inference("base-dir", adapter="runs/sft/final")

A run that starts from an `adapter:` and trains a new adapter (SFT LoRA -> DPO LoRA) merges the loaded one into
the base first, so its `final/` holds only the new adapter. `save_final` records the merged ones, oldest first,
in `final/base_adapters.json`; `load_for_inference` (and `run.common.setup_model`, when a later run starts from
that `final/`, and the reward model's loader) merges them back into the base before adding the adapter itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from posttrain.config import RunConfig, save_config
from posttrain.models import load_model, load_tokenizer

CONFIG_FILE = "posttrain_config.yaml"
"""The resolved run config, saved next to every final artefact."""

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
BASE_ADAPTERS_FILE = "base_adapters.json"
"""In an adapter directory: the adapters merged into the base before this one was trained (oldest first)."""


def _peft():
    """posttrain.peft, imported only when a run uses adapters."""
    import posttrain.peft as peft

    return peft


def base_adapters(adapter: str | Path) -> list[str]:
    """The adapters merged into the base under `adapter` (oldest first; [] when none were recorded)."""
    path = Path(adapter) / BASE_ADAPTERS_FILE
    return json.loads(path.read_text())["base_adapters"] if path.exists() else []


def merge_base_adapters(model: torch.nn.Module, adapter: str | Path) -> torch.nn.Module:
    """Merge the adapters recorded under `adapter` into `model`, oldest first (a no-op when there are none)."""
    for base in base_adapters(adapter):
        _peft().load_adapter(model, base, adapter_name="base")
        model = _peft().merge_and_unload(model)
    return model


def _record_base_adapters(cfg: RunConfig, directory: Path) -> None:
    """Write BASE_ADAPTERS_FILE: the bases of `cfg.adapter`, plus `cfg.adapter` itself when it was merged
    (a new adapter trained on top) rather than trained further (`peft.method: none`)."""
    chain = base_adapters(cfg.adapter)
    if cfg.peft.method != "none":
        chain.append(str(Path(cfg.adapter).resolve()))
    if chain:
        (directory / BASE_ADAPTERS_FILE).write_text(json.dumps({"base_adapters": chain}, indent=2) + "\n")


def has_adapters(model: torch.nn.Module) -> bool:
    if "posttrain.peft" not in sys.modules:
        return False
    return bool(_peft().peft_configs(model))


def save_final(model: torch.nn.Module, tokenizer, cfg: RunConfig | None, directory: str | Path) -> Path:
    """A full HF model directory (safetensors), or an adapter directory for PEFT runs; plus tokenizer and config."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if has_adapters(model):
        _peft().save_adapter(model, out)
        if cfg is not None and cfg.adapter:
            _record_base_adapters(cfg, out)
    else:
        model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    if cfg is not None:
        save_config(cfg, out / CONFIG_FILE)
    return out


def load_for_inference(
    model: str,
    adapter: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, object]:
    """(model in eval mode, tokenizer). The tokenizer comes from the adapter directory when it holds one; the
    adapters recorded in its BASE_ADAPTERS_FILE are merged into the base first."""
    tok_source = adapter if adapter and any((Path(adapter) / f).exists() for f in TOKENIZER_FILES) else model
    tokenizer = load_tokenizer(tok_source, trust_remote_code=trust_remote_code)
    net = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    if adapter:
        net = add_adapter_chain(net, adapter)
    net.requires_grad_(False)
    return net.eval(), tokenizer


def add_adapter_chain(model: torch.nn.Module, adapter: str | Path) -> torch.nn.Module:
    """`model` with the adapters recorded under `adapter` merged in (oldest first) and `adapter` itself on top."""
    model = merge_base_adapters(model, adapter)
    _peft().load_adapter(model, adapter)
    return model
