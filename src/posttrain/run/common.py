"""What every command does around the loop: load model + tokenizer (+ adapter, + PEFT), save the final artefact,
load a trained result back for inference.

    model, tok = setup_model(cfg)                    # cfg: any RunConfig
    save_final(model, tok, cfg, "runs/sft/final")    # full model dir, or an adapter dir for PEFT runs
    model, tok = load_for_inference("base-dir", adapter="runs/sft/final")

A run that starts from an `adapter:` and trains a new adapter (SFT LoRA -> DPO LoRA) merges the loaded one into
the base first, so its `final/` holds only the new adapter. `save_final` records the merged ones, oldest first,
in `final/base_adapters.json`; `load_for_inference` (and `setup_model`, when a later run starts from that
`final/`) merges them back into the base before adding the adapter itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

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


def prepare_adapters(model: torch.nn.Module, tokenizer, cfg: RunConfig) -> torch.nn.Module:
    """Load `cfg.adapter` and apply `cfg.peft`.

    With `peft.method=none` a loaded adapter keeps training (base frozen). With another method the loaded LoRA is
    first merged into the base, so that `disable_adapters` (the DPO/PPO reference) gives the adapted model.
    """
    if cfg.adapter:
        peft = _peft()
        model = merge_base_adapters(model, cfg.adapter)
        peft.load_adapter(model, cfg.adapter, trainable=cfg.peft.method == "none")
        if cfg.peft.method == "none":
            return model
        model = peft.merge_and_unload(model)
    if cfg.peft.method == "none":
        model.requires_grad_(True)
        return model
    return _peft().apply_peft(model, cfg.peft, tokenizer=tokenizer)


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


def trainable_report(model: torch.nn.Module) -> str:
    params = list(model.parameters())
    trainable, total = sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.2f}"


def setup_model(cfg: RunConfig, verbose: bool = True) -> tuple[torch.nn.Module, object]:
    """Model and tokenizer for training: loaded per `cfg`, adapter loaded, PEFT applied."""
    if not cfg.model:
        raise ValueError("config key 'model' is empty: set it to a model directory or Hub name")
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model, trust_remote_code=cfg.trust_remote_code)
    model = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, trust_remote_code=cfg.trust_remote_code)
    model = prepare_adapters(model, tokenizer, cfg)
    if verbose:
        print(trainable_report(model), file=sys.stderr, flush=True)
    return model, tokenizer


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
        net = merge_base_adapters(net, adapter)
        _peft().load_adapter(net, adapter)
    net.requires_grad_(False)
    return net.eval(), tokenizer


def output_dir(cfg: RunConfig) -> Path:
    """`cfg.output_dir`, created, with the resolved config saved as config.yaml (what a run writes first)."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    return out


def config_command(
    cls: type,
    run: Callable[[Any], dict],
    argv: list[str],
    prog: str,
    doc: str,
    check: Callable[[Any], None] | None = None,
) -> int:
    """The body of every training command's `main`: `--config FILE key=value ...`, `--print-config`, run, and
    one JSON line of final metrics (rank 0 only under torchrun). Config errors (including a ConfigError raised
    by `check(cfg)`) exit 2, run errors (data, NaN, bad values) exit 1."""
    from posttrain.config import ConfigError, load_config, to_dict
    from posttrain.data.schema import DataError
    from posttrain.train.distributed import is_main
    from posttrain.train.loop import TrainingError

    p = argparse.ArgumentParser(prog=prog, description=doc)
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-4 peft.method=lora")
    args = p.parse_args(argv)
    try:
        cfg = load_config(cls, args.config, args.overrides)
        if check is not None:
            check(cfg)
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    try:
        result = run(cfg)
    except (ConfigError, DataError, TrainingError, ValueError, FileNotFoundError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    if is_main():
        print(json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float, str))}))
    return 0
