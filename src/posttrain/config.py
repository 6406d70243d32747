"""Typed run configs: every default lives once, here; YAML files plus `key=value` overrides on top.

    cfg = load_config(SFTConfig, "run.yaml", ["train.lr=3e-4", "peft.method=lora"])

Unknown keys are errors that name the nearest valid key. Values in overrides are parsed as YAML scalars
(`3e-4` -> float, `true` -> bool, `[q_proj, v_proj]` -> list). The loader itself (files, overrides, checks, the
`model: DIR` shorthand) is `posttrain.config_load`, re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from posttrain.checks import FRACTION, NON_NEGATIVE, POSITIVE, at_least
from posttrain.config_load import (  # noqa: F401  (re-exported: the loader's API, imported from here by the commands)
    SCALAR,
    ConfigError,
    check_values,
    from_dict,
    load_config,
    merge,
    parse_overrides,
    save_config,
    to_dict,
)
from posttrain.peft.config import PeftConfig


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
    fsdp_mixed_precision: bool = False
    """train.strategy=fsdp: forward and backward on bf16 copies of the gathered weights, gradients reduced in fp32
    into fp32 shards (FSDP2's MixedPrecisionPolicy); the optimiser keeps fp32 master weights."""
    fsdp_cpu_offload: bool = False
    """train.strategy=fsdp: keep parameter shards, gradients and optimiser state in host memory, copied to the GPU
    layer by layer (FSDP2's CPUOffloadPolicy): less GPU memory, slower steps."""
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
class RolloutConfig:
    """How responses are sampled (PPO, GRPO, RLOO, eval)."""

    backend: Literal["hf", "vllm"] = "hf"
    """hf: posttrain's decode loop over the model, on any device; vllm: a vLLM engine colocated on the GPU (the
    `[vllm]` extra), the policy's weights (LoRA merged) pushed to it before each rollout and the log-probs recomputed
    by the trainer's forward (full models and LoRA only; docs/alignment-ppo.md)."""


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
