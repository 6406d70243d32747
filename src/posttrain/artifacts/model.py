"""Model and adapter artefacts: what `final/` holds for a causal LM, and how every loader reads it back.

    save_final(model, tok, cfg, "runs/sft/final")    # full model dir, or an adapter dir for PEFT runs
    model, tok = load_for_inference("base-dir", adapter="runs/sft/final")

`final/` is self-contained and relocatable:
  * the tokenizer carries the chat template training used (`cfg.template` resolved: `alpaca`, the chatml fallback,
    the tokenizer's own), so `AutoTokenizer.from_pretrained(final).apply_chat_template` renders what training saw;
  * a run that starts from an `adapter:` and trains a new adapter (SFT LoRA -> DPO LoRA) merges the loaded one into
    the base first, so its own adapter is the new one only. The adapters merged under it are copied into
    `final/base_adapters/0`, `1`, ... (oldest first) and listed, relative to `final/`, in `base_adapters.json`;
    `load_for_inference`, `run.common.setup_model` (a later run starting from that `final/`), the reward-model and
    PPO loaders and `posttrain merge` merge them back into the base before adding the adapter itself;
  * an adapter trained on resized embeddings (added tokens) stores the embedding (and untied LM head) rows with it
    (`posttrain.peft.io`), and loading resizes the base first.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError

from posttrain.config import RunConfig, save_config
from posttrain.errors import UserError
from posttrain.models import load_model, load_tokenizer

CONFIG_FILE = "posttrain_config.yaml"
"""The resolved run config, saved next to every final artefact."""

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
BASE_ADAPTERS_FILE = "base_adapters.json"
"""In an adapter directory: the adapters merged into the base before this one was trained (oldest first)."""
BASE_ADAPTERS_DIR = "base_adapters"
"""In an adapter directory: copies of those adapters, so the directory stands on its own."""
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _peft():
    """posttrain.peft, imported only when a run uses adapters."""
    import posttrain.peft as peft

    return peft


@contextlib.contextmanager
def loading(directory: str | Path, what: str) -> Iterator[None]:
    """Read a saved artefact: a missing file, bad JSON, a missing key or tensor, a corrupt safetensors file is one
    UserError, `DIR: not a usable WHAT directory (why)`; UserErrors from below (a bad base model) pass through."""
    try:
        yield
    except UserError:
        raise
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, KeyError):
            reason = f"missing key {e}"
        elif isinstance(e, json.JSONDecodeError):
            reason = f"a JSON file in it is invalid: {e.msg} at line {e.lineno} column {e.colno}"
        raise UserError(f"{directory}: not a usable {what} directory ({reason[:300]})") from None


def check_adapter_dir(adapter: str | Path) -> None:
    """Refuse (before any model is loaded) an --adapter that is not a directory holding adapter_config.json."""
    path = Path(adapter)
    if not path.is_dir():
        raise UserError(
            f"{adapter}: not an adapter directory ({'a file' if path.exists() else 'no such directory'})"
        )
    if not (path / ADAPTER_FILES[0]).is_file():
        raise UserError(f"{adapter}: not an adapter directory (no {ADAPTER_FILES[0]})")


def base_adapters(adapter: str | Path) -> list[Path]:
    """The adapters merged into the base under `adapter` (oldest first; [] when none were recorded). Relative
    entries are relative to `adapter`; absolute ones (written before the chain was copied) are kept."""
    path = Path(adapter) / BASE_ADAPTERS_FILE
    if not path.exists():
        return []
    try:
        listed = json.loads(path.read_text(encoding="utf-8"))["base_adapters"]
    except (ValueError, KeyError, TypeError) as e:  # bad JSON or UTF-8, no list: name the file
        raise UserError(f"{path}: not a list of base adapters ({type(e).__name__}: {e})") from None
    return [Path(adapter) / p for p in listed]


def merge_base_adapters(model: torch.nn.Module, adapter: str | Path) -> torch.nn.Module:
    """Merge the adapters recorded under `adapter` into `model`, oldest first (a no-op when there are none)."""
    for base in base_adapters(adapter):
        _peft().load_adapter(model, base, adapter_name="base")
        model = _peft().merge_and_unload(model)
    return model


def _copy_chain(cfg: RunConfig, directory: Path) -> None:
    """Copy the adapters merged under this run's adapter into `directory/base_adapters/` and list them: the bases of
    `cfg.adapter`, plus `cfg.adapter` itself when it was merged (a new adapter trained on top) rather than trained
    further (`peft.method: none`)."""
    chain = base_adapters(cfg.adapter)
    if cfg.peft.method != "none":
        chain.append(Path(cfg.adapter))
    if not chain:
        return
    names = []
    for i, source in enumerate(chain):
        target = directory / BASE_ADAPTERS_DIR / str(i)
        target.mkdir(parents=True, exist_ok=True)
        for name in ADAPTER_FILES:
            shutil.copyfile(source / name, target / name)
        names.append(f"{BASE_ADAPTERS_DIR}/{i}")
    record = {"base_adapters": names, "copied_from": [str(p.resolve()) for p in chain]}
    (directory / BASE_ADAPTERS_FILE).write_text(json.dumps(record, indent=2) + "\n")


def has_adapters(model: torch.nn.Module) -> bool:
    if "posttrain.peft" not in sys.modules:
        return False
    return bool(_peft().peft_configs(model))


def save_tokenizer(tokenizer, template: str, directory: str | Path) -> None:
    """The tokenizer with `template` (resolved as training resolved it) as its chat template."""
    from posttrain.data.chat import get_template

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = get_template(template, tokenizer)
    tok.save_pretrained(directory)


def save_final(
    model: torch.nn.Module,
    tokenizer,
    cfg: RunConfig | None,
    directory: str | Path,
    heads: dict[str, dict[str, torch.Tensor]] | None = None,
    task_type: str = "CAUSAL_LM",
) -> Path:
    """A full HF model directory (safetensors), or an adapter directory for PEFT runs (with the adapter chain it
    was trained on, and `heads` / `task_type` as `peft.save_adapter` takes them); plus the tokenizer with the
    training chat template, and the run config."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if has_adapters(model):
        _peft().save_adapter(model, out, heads=heads, task_type=task_type)
        if cfg is not None and cfg.adapter:
            _copy_chain(cfg, out)
    else:
        model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        save_tokenizer(tokenizer, cfg.template if cfg is not None else "auto", out)
    if cfg is not None:
        save_config(cfg, out / CONFIG_FILE)
    return out


def add_adapter_chain(
    model: torch.nn.Module, adapter: str | Path, heads: tuple[str, ...] = ()
) -> torch.nn.Module:
    """`model` with the adapters recorded under `adapter` merged in (oldest first) and `adapter` itself on top
    (`heads`: modules saved with it that live outside `model`, left for `peft.read_heads`)."""
    with loading(adapter, "adapter"):
        model = merge_base_adapters(model, adapter)
        _peft().load_adapter(model, adapter, heads=heads)
    return model


def trained_quantization(adapter: str | Path | None) -> dict:
    """`load_model` keywords for the base an adapter was trained on: its run config's `model.quantization`,
    `double_quant` and `compute_dtype` (an adapter trained on an nf4 base is evaluated on that nf4 base), or {}."""
    path = Path(adapter) / CONFIG_FILE if adapter else None
    if path is None or not path.is_file():
        return {}
    import yaml

    try:
        section = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("model")
    except (yaml.YAMLError, OSError, UnicodeDecodeError, AttributeError):
        return {}
    if not isinstance(section, dict) or section.get("quantization", "none") == "none":
        return {}
    return {k: section[k] for k in ("quantization", "double_quant", "compute_dtype") if k in section}


def load_for_inference(
    model: str,
    adapter: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    heads: tuple[str, ...] = (),
    quantization: dict | None = None,
) -> tuple[torch.nn.Module, object]:
    """(model in eval mode, tokenizer). The tokenizer comes from the adapter directory when it holds one; the
    adapters recorded in its BASE_ADAPTERS_FILE are merged into the base first. The base is loaded quantised as the
    adapter was trained (`trained_quantization`) unless `quantization` ({"quantization": "nf4", ...}) says how."""
    if adapter:
        check_adapter_dir(adapter)
    tok_source = adapter if adapter and any((Path(adapter) / f).exists() for f in TOKENIZER_FILES) else model
    tokenizer = load_tokenizer(tok_source, trust_remote_code=trust_remote_code)
    quant = trained_quantization(adapter) if quantization is None else quantization
    net = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code, **quant)
    if adapter:
        net = add_adapter_chain(net, adapter, heads)
    net.requires_grad_(False)
    return net.eval(), tokenizer
