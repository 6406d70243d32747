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
from typing import Any, ClassVar, Literal, TypeVar

import yaml

from posttrain.checks import FRACTION, NON_NEGATIVE, POSITIVE, at_least
from posttrain.errors import UsageError
from posttrain.peft.config import PeftConfig

T = TypeVar("T")


class ConfigError(UsageError, ValueError):
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
    """Peak learning rate."""
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit"] = "adamw"
    """adamw (torch, fused where it can be) | adamw_8bit (bitsandbytes: moments in 8 bits, block-wise, 75% less optimiser
    memory) | paged_adamw | paged_adamw_8bit (states in CUDA unified memory that pages to the host under memory
    pressure; on CPU the same as unpaged). The bitsandbytes ones need the [qlora] extra."""
    lr_scale: dict[str, float] = field(default_factory=dict)
    """Learning-rate factors by parameter name, {glob: factor}, first match wins (unmatched: 1). E.g. trainable token
    rows slower than a prefix, {"*trainable_tokens*": 0.05}, or LoRA+ (B faster than A), {"*lora_B*": 16}."""
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
    overwrite: bool = False
    """When output_dir holds another run (or train.resume=false): move it aside to OUTPUT.old-N and start afresh."""
    progress: bool = True
    """Show progress on stderr: a bar on a terminal, a plain line every 30 s otherwise (POSTTRAIN_PROGRESS_EVERY_S)."""
    report_to: list[Literal["jsonl", "tensorboard", "wandb", "trackio", "mlflow"]] = field(
        default_factory=lambda: ["jsonl"]
    )
    """Where metrics go besides metrics.jsonl (always written): any of tensorboard (OUTPUT/tensorboard), wandb (offline
    unless WANDB_MODE says otherwise), trackio, mlflow (OUTPUT/mlruns unless MLFLOW_TRACKING_URI); each an extra."""
    tracker_project: str = "posttrain"
    """The project / experiment name the trackers file the run under (the run is named after output_dir)."""

    checks: ClassVar[dict] = {
        "epochs": POSITIVE,
        "batch_size": at_least(1),
        "grad_accum": at_least(1),
        "lr": POSITIVE,
        "weight_decay": NON_NEGATIVE,
        "warmup_steps": at_least(0),
        "warmup_ratio": FRACTION,
        "max_grad_norm": NON_NEGATIVE,
        "max_length": at_least(2),
        "eval_every": at_least(0),
        "save_every": at_least(0),
        "keep_last": at_least(1),
        "log_every": at_least(1),
    }
    """Value ranges checked when the config loads (before anything is written)."""

    def check(self) -> list[tuple[str, str]]:
        bad = [("max_steps", "-1 or >= 1")] if self.max_steps == 0 or self.max_steps < -1 else []
        if not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in self.lr_scale.values()
        ):
            bad.append(("lr_scale", "a mapping of parameter-name globs to positive factors"))
        return bad + [("betas", "two numbers in [0, 1)") for b in self.betas if not FRACTION.ok(b)][:1]


ATTN_IMPLEMENTATIONS = (
    "auto",
    "eager",
    "sdpa",
    "flash_attention_2",
    "flash_attention_3",
    "flash_attention_4",
    "flex_attention",
)
"""What `model.attn_implementation` accepts besides a Hub kernel repo ("kernels-community/flash-attn")."""


@dataclass
class ModelConfig:
    """What to load and how: `model: NAME` (the shorthand) or a section with `name` and the keys below.

    model=Qwen/Qwen2.5-0.5B model.quantization=nf4 peft.method=lora      # QLoRA
    """

    name: str = ""
    """Model directory or Hub name."""
    quantization: Literal["none", "nf4", "fp4", "int8"] = "none"
    """Load the base quantised through bitsandbytes (frozen; adapters train beside it in fp32): none | nf4 | fp4
    (4-bit, QLoRA) | int8 (LLM.int8()). Needs a PEFT method and the [qlora] extra."""
    double_quant: bool = True
    """4-bit: quantise the quantisation constants too (QLoRA's double quantisation, ~0.4 bits per weight less)."""
    compute_dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """4-bit: the dtype weights are dequantised to for each matmul (auto: the run's dtype)."""
    attn_implementation: str = "auto"
    """Attention kernel passed to transformers: auto (sdpa where the architecture has it, else eager) | eager | sdpa |
    flash_attention_2 | flash_attention_3 | flash_attention_4 | flex_attention | a Hub kernel repo (owner/name).
    The flash kernels need their package (flash-attn) and a GPU; a missing one is one error line at load."""

    shorthand: ClassVar[str] = "name"
    """A plain value given for the section (`model: ./dir`) sets this field."""

    def check(self) -> list[tuple[str, str]]:
        a = self.attn_implementation
        if a not in ATTN_IMPLEMENTATIONS and a.count("/") != 1:
            return [("attn_implementation", " | ".join(ATTN_IMPLEMENTATIONS) + " | owner/kernel-repo")]
        return []

    def __str__(self) -> str:  # what a model card or log line names
        return self.name


@dataclass
class RunConfig:
    """Fields every training command shares: what to load, what to train on, where to write."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Model directory or Hub name (`model: NAME`), or a section: name, quantization, double_quant, compute_dtype,
    attn_implementation."""
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

    checks: ClassVar[dict] = {"eval_fraction": FRACTION}

    def __post_init__(self) -> None:
        if isinstance(self.model, str):  # the Python API's SFTConfig(model="dir")
            self.model = ModelConfig(name=self.model)

    def check(self) -> list[tuple[str, str]]:
        if self.model.quantization != "none" and self.peft.method == "none" and not self.adapter:
            return [
                (
                    "model.quantization",
                    "used with a PEFT method (a quantised base stays frozen: peft.method=lora)",
                )
            ]
        return []


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
        short = getattr(tp, "shorthand", None)
        if short and not isinstance(value, (dict, list)):
            value = {SCALAR: value}
        if not isinstance(value, dict) or (SCALAR in value and not short):
            shown = value.get(SCALAR, value) if isinstance(value, dict) else value
            raise ConfigError(f"{key}: expected a mapping, got {shown!r}")
        if (
            SCALAR in value
        ):  # the plain value and `name` both given: the later one wins (merge keeps recency order)
            named: dict[str, Any] = {}
            for k, v in value.items():
                named.pop(short if k == SCALAR else k, None)
                named[short if k == SCALAR else k] = v
            value = named
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
        if not isinstance(value, dict) or SCALAR in value:
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
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{near[0]}'?" if near else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
        factory = fields[key].default_factory
        if (
            isinstance(value, dict)
            and dataclasses.is_dataclass(hints[key])
            and factory is not dataclasses.MISSING
        ):
            value = merge(to_dict(factory()), value)  # keys not given keep the field's own default (a preset)
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    obj = cls(**kwargs)
    check_values(obj, prefix)
    return obj


def check_values(obj: Any, prefix: str = "") -> None:
    """A dataclass's `checks` ({field: Check}) and `check()` (-> [(field, expected)]), as one ConfigError."""
    bad = [
        (name, c.text) for name, c in getattr(type(obj), "checks", {}).items() if not c.ok(getattr(obj, name))
    ]
    if hasattr(obj, "check"):
        bad += obj.check()
    if bad:
        name, expected = bad[0]
        value = obj
        for part in name.split("."):  # a check on a nested field names it dotted ("model.quantization")
            value = getattr(value, part)
        raise ConfigError(f"{prefix}{name}: must be {expected}, got {value!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), suitable for YAML/JSON."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return clean(dataclasses.asdict(cfg))


SCALAR = ""
"""The key a section's plain value is kept under when keys of the section are given too (`model=DIR` with
`model.quantization=nf4`); the section's `shorthand` field takes it."""


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
            if p in node and not isinstance(node[p], (dict, list)):
                node[p] = {SCALAR: node[p]}  # `model=DIR model.quantization=nf4`
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{p}' is not a section")
        last = parts[-1]
        if isinstance(node.get(last), dict) and not isinstance(value, (dict, list)):
            node[last][SCALAR] = value  # `model.quantization=nf4 model=DIR`
        else:
            node[last] = value
    return out


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `top` wins. A plain value meeting a section (`model: DIR` in the file,
    `model.quantization=nf4` on top, or the reverse) is kept under SCALAR inside it, for the section's shorthand;
    in such a section keys set by `top` move to the end, so that the later of SCALAR and the shorthand field wins."""
    out = dict(base)
    for k, v in top.items():
        old = out.get(k)
        if isinstance(v, dict) and old is not None and not isinstance(old, (dict, list)):
            old = {SCALAR: old}
        if isinstance(old, dict) and v is not None and not isinstance(v, (dict, list)) and old:
            v = {SCALAR: v}
        if k == SCALAR or SCALAR in out:  # re-inserted last: the later of SCALAR and `name` wins
            out.pop(k, None)
        out[k] = merge(old, v) if isinstance(v, dict) and isinstance(old, dict) else v
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Read YAML `path` (optional), apply `key=value` overrides, build `cls`. Errors name the file."""
    data: dict[str, Any] = {}
    text = ""
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
            data = yaml.safe_load(text) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except UnicodeDecodeError as e:
            line = e.object[: e.start].count(b"\n") + 1
            raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {e.start})") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config: {e.strerror or e}") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{at}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the config must be a mapping of keys to values")
    from_file = data
    data = merge(data, parse_overrides(overrides or []))
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        if not path:
            raise
        key = _error_key(str(e))
        line = _key_line(text, key) if key and _has_key(from_file, key) else None
        raise ConfigError(f"{path}{f':{line}' if line else ''}: {e}") from None


def _error_key(message: str) -> str | None:
    """The dotted key a ConfigError message starts with ('train.lr: ...', "unknown config key 'x.y'")."""
    import re

    m = re.match(r"unknown config key '([\w.]+)'", message) or re.match(r"([\w.]+)(?:\[\d+\])?: ", message)
    return m.group(1) if m else None


def _has_key(data: dict[str, Any], key: str) -> bool:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _key_line(text: str, key: str) -> int | None:
    """1-based line of dotted `key` in YAML `text` (None when it cannot be found)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in key.split("."):
        if not isinstance(node, yaml.MappingNode):
            return line
        for k, v in node.value:
            if getattr(k, "value", None) == part:
                line, node = k.start_mark.line + 1, v
                break
        else:
            return line
    return line


def save_config(cfg: Any, path: str | Path) -> None:
    from posttrain.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
