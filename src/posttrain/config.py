"""Typed run configs: every default lives once, here; YAML files plus `key=value` overrides on top.

    cfg = load_config(SFTConfig, "run.yaml", ["train.lr=3e-4", "peft.method=lora"])

Unknown keys are errors that name the nearest valid key. Values in overrides are parsed as YAML scalars
(`3e-4` -> float, `true` -> bool, `[q_proj, v_proj]` -> list).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from posttrain.peft.config import PeftConfig

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key (and file, when there is one)."""


@dataclass
class TrainConfig:
    """The one training loop's knobs, shared by every objective."""

    max_steps: int = -1
    """Optimiser steps to run; -1 means `epochs` decides."""
    epochs: float = 1.0
    """Passes over the training data (fractions allowed) when `max_steps` is -1."""
    batch_size: int = 8
    """Samples per micro-batch (per device). With packing: samples packed into one row."""
    grad_accum: int = 1
    """Micro-batches per optimiser step. Loss is normalised over the whole step, so batch x accum is what counts."""
    lr: float = 1e-4
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay (not applied to biases and norms)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate schedule after warmup: cosine | linear | constant."""
    warmup_steps: int = 0
    """Linear warmup steps (overrides warmup_ratio when > 0)."""
    warmup_ratio: float = 0.0
    """Warmup as a fraction of total steps."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 disables clipping."""
    max_length: int = 1024
    """Longest tokenised sample; longer samples follow `truncation`."""
    truncation: Literal["right", "left", "drop"] = "right"
    """Over-long samples: right (cut the end) | left (cut the start, keep the last turns) | drop."""
    packing: bool = False
    """Padding-free packing: samples concatenated, positions reset per sample, no attention across samples."""
    group_by_length: bool = True
    """Padded batches of similar lengths (less padding); order stays seeded and reproducible."""
    seed: int = 0
    """Seeds data order, dropout and initialisation."""
    mixed_precision: Literal["auto", "bf16", "fp16", "no", "none"] = "auto"
    """Autocast: auto (bf16 on CUDA where supported, else none) | bf16 | fp16 | no."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    eval_every: int = 0
    """Evaluate on eval data every N steps (0: only at the end, when eval data exists)."""
    save_every: int = 0
    """Write a checkpoint every N steps (0: only at the end)."""
    keep_last: int = 2
    """Checkpoints to keep."""
    log_every: int = 1
    """Write metrics every N steps."""
    resume: bool = True
    """Resume from the newest checkpoint in output_dir when one exists."""
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    """Distributed strategy under torchrun: auto | ddp | fsdp (single process: ignored)."""
    progress: bool = True
    """Show a progress bar."""


@dataclass
class RunConfig:
    """Fields every training command shares: what to load, what to train on, where to write."""

    model: str = ""
    """Model directory or Hub name."""
    tokenizer: str | None = None
    """Tokenizer directory or Hub name (default: same as model)."""
    adapter: str | None = None
    """Adapter directory to load on top of the model before training (e.g. an SFT LoRA)."""
    dtype: Literal["auto", "fp32", "bf16", "fp16", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype: fp32 | bf16 | fp16 | auto (bf16 on CUDA with support, else fp32)."""
    device: str = "auto"
    """cuda | mps | cpu | auto."""
    trust_remote_code: bool = False
    """Allow model code from the Hub. Off unless asked."""
    data: str = ""
    """Training data: file (json, jsonl, parquet, csv), comma-separated files, or a `datasets` Hub name."""
    data_format: Literal[
        "auto", "messages", "alpaca", "prompt_completion", "text", "pairs", "hh", "ranking"
    ] = "auto"
    """auto | messages | alpaca | prompt_completion | text (SFT); auto | pairs | hh | ranking (preferences)."""
    eval_data: str | None = None
    """Held-out data in the same format (optional)."""
    eval_fraction: float = 0.0
    """When no eval_data: hold out this fraction of data (seeded)."""
    output_dir: str = "runs/out"
    """Where checkpoints, metrics.jsonl and the final model go."""
    template: str = "auto"
    """Chat template: auto (the tokenizer's own, else chatml) | chatml | llama3 | alpaca | plain | path/to/file.jinja."""
    system_prompt: str | None = None
    """System message added to conversations that have none."""
    peft: PeftConfig = field(default_factory=PeftConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class SFTConfig(RunConfig):
    """`posttrain sft`: supervised fine-tuning on conversations, loss on assistant turns only."""


# --------------------------------------------------------------------------------------------------------------
# dict <-> dataclass


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check / convert a YAML value to the annotated type; raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if tp is Any:
        return value
    if origin is typing.Literal:
        return _choice(value, args, key)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads '3e-4' as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _choice(value: Any, choices: tuple, key: str) -> Any:
    """`value` when it is one of `choices` (a Literal's values), else a ConfigError naming the nearest one."""
    if value in choices:
        return value
    names = [str(c) for c in choices]
    near = difflib.get_close_matches(str(value), names, n=1, cutoff=0.4)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    raise ConfigError(f"{key}: {value!r} is not one of {' | '.join(names)}{hint}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a nested dict; unknown keys raise ConfigError with a suggestion."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{near[0]}'?" if near else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), suitable for YAML/JSON."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return clean(dataclasses.asdict(cfg))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['train.lr=3e-4', 'peft.method=lora'] -> {'train': {'lr': 0.0003}, 'peft': {'method': 'lora'}}."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{p}' is not a section")
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `top` wins."""
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Read YAML `path` (optional), apply `key=value` overrides, build `cls`. Errors name the file."""
    data: dict[str, Any] = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read config: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the config must be a mapping of keys to values")
    data = merge(data, parse_overrides(overrides or []))
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
