"""Every knob of `posttrain demo` in one place: the full run and the `--quick` smoke run.

Budgets aimed at 2 CPU cores: full <= 15 min, quick <= 3 min (the base model is cached after its first run); on the
slow 2-core development machine the full run measured 889 s on seed 0 before the GRPO stage, 909 s with it
(docs/demo.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from posttrain.demo.base import BaseConfig
from posttrain.demo.world import WorldConfig

PEFT_METHODS = ("full", "lora", "qlora", "adapter", "prefix", "prompt")

ROWS = {"trainable_tokens": "[template]"}
"""The base never sees <|im_start|> / <|im_end|> in pre-training, so their rows are random; every PEFT method trains
those two rows too (`peft.trainable_tokens`), or it cannot learn to end a turn (docs/peft.md)."""

PEFT = {  # method -> peft.* overrides
    "full": {"method": "none"},
    "lora": {"method": "lora", "lora.r": 16, "lora.alpha": 32, **ROWS},
    "qlora": {"method": "lora", "lora.r": 16, "lora.alpha": 32, **ROWS},
    "adapter": {"method": "adapter", "adapter.reduction_factor": 4, **ROWS},
    "prefix": {"method": "prefix", "prefix.num_virtual_tokens": 8, **ROWS},
    "prompt": {"method": "prompt", "prompt.num_virtual_tokens": 100, **ROWS},
}

MODEL = {"qlora": {"quantization": "nf4"}}
"""method -> model.* overrides: QLoRA is LoRA of the same size on the base quantised to NF4 (docs/peft.md)."""


@dataclass
class DemoSettings:
    quick: bool = False
    """Smoke-test sizes (CI) instead of the full demo."""
    seed: int = 0
    """Seeds the world, the base model and every run."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """The task world (facts, splits, assistant name and maker)."""
    base: BaseConfig = field(default_factory=BaseConfig)
    """Tiny base model and its pre-training budget."""
    sft_steps: int = 1000
    """SFT optimiser steps, the same for every PEFT method and full tuning (one budget rule: equal steps on the
    same data and batch size)."""
    scaling_tasks: list[int] = field(default_factory=lambda: [6])
    """Task scaling: extra full fine-tunes on the first k training tasks (`tasks.TRAIN_TASKS` order), same budget;
    the base is the curve's point at 0 tasks and the full run on all of them its last ([]: skip). [2, 6] adds a
    point for about 95 s (2 tasks scored 0.00 on seed 0, as the base does)."""
    study_sizes: dict[str, dict[str, int]] = field(
        default_factory=lambda: {
            "small": {"hidden_size": 64, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate_size": 192},
            "default": {},
        }
    )
    """`posttrain demo --study peft`: base sizes (BaseConfig fields changed from the demo's base), each pre-trained on
    the world (cached) and tuned with every method."""
    study_eval_fraction: float = 0.05
    """`--study peft --models ...`: share of the user's data held out for the eval loss."""
    sft_text_share: float = 0.25
    """Pre-training documents mixed into SFT, as a share of the instruction records (0: none): keeps the base's
    knowledge through tuning (held-out phrasings 0.20 -> 0.36, refusals 0.79 / 0.15 -> 0.92 / 0.00 measured)."""
    sft_batch: int = 16
    """SFT micro-batch size (12 measured: held-out instances 0.51 -> 0.42 for full tuning, and no faster per step)."""
    sft_records: int = 0
    """At most this many mixed instruction records (0: all the sources give); a short run need not tokenise 25K
    records it never reaches (quick: 150 steps x 16 = 2400 samples)."""
    chats: int = 300
    """Chat-like multi-turn conversations generated before mixing."""
    self_instruct_tasks: int = 4
    """Self-Instruct tasks to bootstrap with the base model as generator (0: skip)."""
    eval_per_task: int = 12
    """Evaluation prompts per task and split."""
    gen_batch: int = 512
    """Prompts per generation batch (evaluation, rankings, gold reward): a decode step of the tiny model costs about
    the same for 64 rows as for 512, so sampling 832 responses took 4.2 s at 512 against 8.1 s at 64."""
    rank_prompts: int = 1250
    """Task prompts sampled K times for the ranking data (safety and identity prompts are added)."""
    rank_heldout: int = 400
    """Held-out-instance prompts for the reward model's held-out pairs."""
    rank_k: int = 6
    """Responses sampled per prompt for the K-way rankings."""
    rank_safety_repeat: int = 3
    """Times every training safety and identity prompt joins the ranking and PPO prompts: enough comparisons for the
    reward model to value refusals and the assistant's identity, so PPO does not trade them away."""
    rank_temperatures: list[float] = field(default_factory=lambda: [1.0, 1.5])
    """Sampling temperatures the K responses cycle through (diverse responses make informative comparisons)."""
    rm_steps: int = 400
    """Reward model optimiser steps."""
    ppo_steps: int = 128
    """PPO optimiser steps (minibatches)."""
    ppo_rollout: int = 64
    """Responses per PPO rollout batch."""
    dpo_steps: int = 128
    """DPO optimiser steps."""
    grpo_steps: int = 32
    """GRPO optimiser steps, one per rollout batch (on-policy: each batch trains the policy that sampled it)."""
    grpo_rollout: int = 64
    """Responses per GRPO rollout batch: grpo_rollout / grpo_k task prompts, grpo_k samples each."""
    grpo_k: int = 4
    """Samples per prompt that GRPO compares (its group)."""
    grpo_reward: str = "normalized"
    """The verifiable reward: a built-in checker against each task prompt's answer (1 when the response is the
    answer after normalisation, so a right answer with a pleasantry scores 0, as the gold labeller marks it down)."""
    gold_samples: int = 4
    """Sampled responses per prompt when measuring mean gold reward and KL."""
    sft_lr: dict[str, float] = field(
        default_factory=lambda: {
            "full": 4e-3,
            "lora": 5e-3,
            "qlora": 5e-3,
            "adapter": 1e-2,
            "prefix": 1e-1,
            "prompt": 3e-1,
        }
    )
    """SFT learning rate per PEFT method, each the best of a sweep at 600 steps (docs/demo.md): the fewer parameters
    a method trains, the larger the step it takes. QLoRA takes LoRA's (the same adapter on a 4-bit base)."""
    rm_lr: float = 1e-4
    """Reward model learning rate."""
    rm_likelihood_coef: float = 0.3
    """c in reward = head(h_last) + c * log p(response | prompt) under the reward model's LM head. The head alone
    learns style from the rankings; the LM head already knows which answer is right (docs/demo.md). Larger c
    spreads rewards over tens of nats and PPO gains less."""
    rm_loss: Literal["pairwise", "listwise"] = "pairwise"
    """Reward model loss: pairwise (Bradley-Terry over every pair) | listwise (Plackett-Luce per ranking)."""
    ppo_lr: float = 2e-5
    """PPO learning rate."""
    ppo_kl_coef: float = 0.2
    """PPO per-token KL penalty towards the SFT model."""
    dpo_lr: float = 2e-5
    """DPO learning rate."""
    grpo_lr: float = 1e-4
    """GRPO learning rate (seed 0, from the full run's SFT model: 2e-5 moved gold reward +0.035 at KL 0.03, 1e-4
    +0.041 at KL 0.21 with the sampled reward rising 0.41 -> 0.7)."""
    grpo_kl_coef: float = 0.04
    """GRPO's KL (k3) weight in the loss, towards the SFT model."""
    dpo_beta: float = 0.1
    """DPO beta (strength of the implicit KL constraint)."""
    dpo_rpo_alpha: float = 0.0
    """Weight of the NLL term on chosen responses (RPO)."""
    dpo_pairs: Literal["all", "best", "best_worst"] = "all"
    """Which pairs of each ranking DPO trains on: all | best | best_worst."""

    def check(self) -> list[tuple[str, str]]:
        from posttrain.demo.tasks import TRAIN_TASKS

        bad = (
            [("sft_lr", f"a learning rate for each of {list(PEFT_METHODS)}")]
            if set(self.sft_lr) < set(PEFT)
            else []
        )
        if not all(isinstance(k, int) and 0 < k < len(TRAIN_TASKS) for k in self.scaling_tasks):
            bad.append(("scaling_tasks", f"task counts between 1 and {len(TRAIN_TASKS) - 1}"))
        if self.gen_batch < 1:
            bad.append(("gen_batch", "at least 1"))
        if self.sft_records < 0:
            bad.append(("sft_records", "0 (all) or a positive record count"))
        known = {f.name for f in dataclasses.fields(BaseConfig)}
        if any(set(size) - known for size in self.study_sizes.values()):
            bad.append(("study_sizes", f"BaseConfig fields per size ({', '.join(sorted(known))})"))
        return bad

    def sft_train(self, method: str) -> dict[str, Any]:
        return {
            "max_steps": self.sft_steps,
            "batch_size": self.sft_batch,
            "lr": float(self.sft_lr[method]),
            "warmup_ratio": 0.05,
            "schedule": "cosine",
        }

    def peft_overrides(self, method: str) -> list[str]:
        return [f"peft.{k}={v}" for k, v in PEFT[method].items()] + [
            f"model.{k}={v}" for k, v in MODEL.get(method, {}).items()
        ]

    @property
    def rm_train(self) -> dict[str, Any]:
        return {"max_steps": self.rm_steps, "batch_size": 16, "lr": self.rm_lr, "warmup_ratio": 0.05}

    @property
    def ppo_train(self) -> dict[str, Any]:
        return {"max_steps": self.ppo_steps, "batch_size": 16, "lr": self.ppo_lr, "schedule": "constant"}

    @property
    def ppo_args(self) -> dict[str, Any]:
        return {
            "rollout_batch_size": self.ppo_rollout,
            "mini_batch_size": self.ppo_rollout // 2,
            "ppo_epochs": 2,
            "max_new_tokens": 64,
            "kl_coef": self.ppo_kl_coef,
            "max_prompt_length": 128,
        }

    @property
    def grpo_train(self) -> dict[str, Any]:
        return {"max_steps": self.grpo_steps, "batch_size": 16, "lr": self.grpo_lr, "schedule": "constant"}

    @property
    def grpo_args(self) -> dict[str, Any]:
        return {
            "reward": self.grpo_reward,
            "rollout_batch_size": self.grpo_rollout,
            "mini_batch_size": self.grpo_rollout,
            "samples_per_prompt": self.grpo_k,
            "ppo_epochs": 1,
            "max_new_tokens": 32,
            "kl_coef": self.grpo_kl_coef,
            "max_prompt_length": 128,
        }

    @property
    def dpo_train(self) -> dict[str, Any]:
        return {"max_steps": self.dpo_steps, "batch_size": 16, "lr": self.dpo_lr, "warmup_ratio": 0.05}

    @property
    def dpo_args(self) -> dict[str, Any]:
        return {"beta": self.dpo_beta, "rpo_alpha": self.dpo_rpo_alpha, "pairs": self.dpo_pairs}


QUICK = {
    "base": {"steps": 300},
    "sft_steps": 150,
    "sft_records": 2400,
    "chats": 100,
    "self_instruct_tasks": 0,
    "eval_per_task": 4,
    "rank_prompts": 64,
    "rank_heldout": 32,
    "rm_steps": 40,
    "ppo_steps": 8,
    "ppo_rollout": 32,
    "dpo_steps": 30,
    "grpo_steps": 4,
    "grpo_rollout": 16,
    "gold_samples": 1,
    "rank_safety_repeat": 0,
    "scaling_tasks": [2],
}
"""What `--quick` changes (everything else as in the full run)."""


def settings(quick: bool = False, seed: int = 0, overrides: list[str] | None = None) -> DemoSettings:
    """The full demo, or the `--quick` smoke run, plus `key=value` overrides (`sft_steps=100 base.steps=200`)."""
    from posttrain.config import from_dict, merge, parse_overrides, to_dict

    data = to_dict(
        DemoSettings(seed=seed, world=WorldConfig(seed=seed), base=BaseConfig(steps=5000, seed=seed))
    )
    if quick:
        data = merge(data, {"quick": True, **QUICK})
    return from_dict(DemoSettings, merge(data, parse_overrides(overrides or [])))
