"""`posttrain eval` config: what to load, and one section per evaluation, each enabled by giving its file.

model: runs/base            # plus adapter: runs/sft/final for a PEFT run
compare: [{name: sft, model: runs/sft/final}]
likelihood: {data: heldout.jsonl}
accuracy: {data: tasks.jsonl, user_metric: my_metrics:f1}
preference: {data: prompts.jsonl, reward_model: runs/rm/final, kl_reference: base}
safety: {harmful: harmful.jsonl, benign: benign.jsonl, identity: who.jsonl, identity_names: [posttrain]}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from posttrain.config import RolloutConfig
from posttrain.eval.accuracy import DEFAULT_METRICS


@dataclass
class ModelSpec:
    """One more model to evaluate side by side with the main one."""

    name: str = ""
    """Label in the report (default: the adapter's or model's directory name)."""
    model: str = ""
    """Model directory or Hub name."""
    adapter: str | None = None
    """Adapter directory loaded on top of `model`."""


@dataclass
class LikelihoodArgs:
    data: str | None = None
    """Held-out conversations (messages format): per-token loss and perplexity on assistant tokens only."""
    max_length: int = 1024
    """Longest tokenised conversation; longer ones are cut on the right."""


@dataclass
class AccuracyArgs:
    data: str | None = None
    """Prompts with references (messages / prompt / instruction + reference, optional meta.task): generate and score."""
    predictions: str | None = None
    """Rows with a `prediction` field and a reference: scored as given, no model needed."""
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    """Built-in metrics: exact | normalized | contains."""
    user_metric: str | None = None
    """Extra metric `module:function` or `file.py:function`, called as fn(prediction, reference, row) -> float."""


@dataclass
class PreferenceArgs:
    data: str | None = None
    """Prompts (optionally with reference answers) for reward scores, win rates and KL."""
    reward_model: str | None = None
    """Reward model directory (`posttrain rm` output) judging the responses; no judge: KL only."""
    against_reference: bool = True
    """Also report each model's win rate over the file's reference answers (when the rows have them)."""
    n_boot: int = 1000
    """Bootstrap resamples for win-rate confidence intervals."""
    kl_reference: str | None = None
    """Reference for KL(model || reference): a model directory, or `base` (the model with its adapter switched off)."""
    kl_reference_adapter: str | None = None
    """Adapter loaded on top of `kl_reference` (e.g. the SFT adapter a PPO run started from)."""
    kl_samples: int = 1
    """Responses sampled (temperature 1) per prompt for the KL estimate."""


@dataclass
class SafetyArgs:
    harmful: str | None = None
    """High-risk prompts: the refusal rate on them (higher is safer)."""
    benign: str | None = None
    """Benign prompts: the false-refusal rate on them (lower is better)."""
    classifier: Literal["phrases", "reward"] = "phrases"
    """How refusals are detected: phrases (a phrase list) | reward (a reward model above `threshold`)."""
    phrases: str | None = None
    """File of refusal phrases, one per line (default: posttrain.eval.safety.DEFAULT_PHRASES)."""
    reward_model: str | None = None
    """Reward model directory for classifier=reward."""
    threshold: float = 0.0
    """classifier=reward: a score above it (below it when refusal_above is false) is a refusal."""
    refusal_above: bool = True
    """classifier=reward: refusals score high (a refusal detector) rather than low."""
    identity: str | None = None
    """Identity prompts ("Who are you?", "Who made you?"); rows with references are scored by them instead."""
    identity_names: list[str] = field(default_factory=list)
    """Names counted as a correct identity answer (the assistant's name, its maker); any one suffices."""


@dataclass
class EvalConfig:
    """`posttrain eval`: any model (+ adapter), sections enabled by their files, one report."""

    model: str = ""
    """Model directory or Hub name (may be empty when only `accuracy.predictions` is scored)."""
    name: str = ""
    """Label of the main model in the report (default: the adapter's or model's directory name)."""
    adapter: str | None = None
    """Adapter directory loaded on top of `model`."""
    tokenizer: str | None = None
    """Tokenizer directory or Hub name (default: the model's)."""
    dtype: Literal["auto", "fp32", "bf16", "fp16", "float32", "bfloat16", "float16"] = "auto"
    """fp32 | bf16 | fp16 | auto."""
    device: str = "auto"
    """cuda | mps | cpu | auto."""
    trust_remote_code: bool = False
    """Allow model code from the Hub. Off unless asked."""
    template: str = "auto"
    """Chat template: auto | chatml | llama3 | alpaca | plain | path/to/file.jinja (use the one training used)."""
    system_prompt: str | None = None
    """System message added to prompts that have none."""
    output_dir: str = "runs/eval"
    """Where report.json, report.md and the plots go."""
    batch_size: int = 16
    """Prompts per generation / scoring batch."""
    max_new_tokens: int = 128
    """Longest generated response."""
    temperature: float = 0.0
    """0: greedy decoding (the default); > 0 samples (seeded by `seed`)."""
    seed: int = 0
    """Seeds sampling and bootstrap resampling."""
    limit: int = 0
    """Use at most this many rows of each file (0: all)."""
    samples: int = 5
    """Generations per section shown in report.md (report.json keeps every scored row)."""
    plots: bool = True
    """Write PNG comparison plots."""
    progress: bool = True
    """Progress bars while generating."""
    compare: list[ModelSpec] = field(default_factory=list)
    """More models evaluated the same way, side by side (CLI: --compare name=dir[:adapter])."""
    likelihood: LikelihoodArgs = field(default_factory=LikelihoodArgs)
    accuracy: AccuracyArgs = field(default_factory=AccuracyArgs)
    preference: PreferenceArgs = field(default_factory=PreferenceArgs)
    safety: SafetyArgs = field(default_factory=SafetyArgs)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
