"""The `ppo:` config section of `posttrain ppo`, `posttrain grpo` and `posttrain rloo`: sampling, the advantage
estimator, the KL to the reference, the clipped losses and their aggregation, rewards, PPO-ptx."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from posttrain.checks import NON_NEGATIVE, POSITIVE, UNIT, Check, at_least


@dataclass
class PPOArgs:
    """`ppo:` section of `posttrain ppo` configs."""

    reward: str = ""
    """Reward model directory (from `posttrain rm`), a Python callable `module:function` called as
    fn(prompts: list[str], responses: list[str], **meta) -> list[float], or a built-in checker (`rewards`)."""
    rewards: dict[str, float] = field(default_factory=dict)
    """More reward terms, {spec: weight}, added to `reward` (weight 1): built-in checkers (exact | normalized |
    number [:FIELD] against the prompt row's meta, regex:PATTERN, length:MAX_TOKENS), reward models, functions;
    e.g. {"number": 1.0, "regex:^\\d+$": 0.2}."""
    rollout_batch_size: int = 64
    """Responses sampled per rollout batch (= prompts x samples_per_prompt), per rank under torchrun."""
    samples_per_prompt: int = 1
    """Responses sampled for each prompt in a rollout batch."""
    mini_batch_size: int = 16
    """Responses per optimiser step (split into micro-batches of train.batch_size), per rank under torchrun."""
    share_prompt: bool = True
    """With samples_per_prompt > 1: run each prompt's responses as one row [prompt | r_1 | ... | r_k] with a 4D mask
    (the prompt computed once; the same numbers), where the model's attention allows it and mini_batch_size and
    train.batch_size are multiples of samples_per_prompt (`posttrain.objectives.group_rows`)."""
    ppo_epochs: int = 4
    """Passes over each rollout batch."""
    max_prompt_length: int = 512
    """Longer prompts keep their last tokens."""
    max_new_tokens: int = 128
    """Response length limit."""
    min_new_tokens: int = 0
    """Block stop tokens before this many new tokens (biases samples: needs allow_biased_sampling)."""
    temperature: float = 1.0
    """Sampling temperature; the policy's log-probabilities use the same temperature."""
    top_k: int = 0
    """Top-k filtering (0: off; biases samples: needs allow_biased_sampling)."""
    top_p: float = 1.0
    """Nucleus filtering (1.0: off; biases samples: needs allow_biased_sampling)."""
    estimator: Literal["gae", "grpo", "rloo", "reinforce_pp"] = "gae"
    """Advantage estimator: gae (PPO with a value model) | grpo (group-normalised rewards) | rloo (leave-one-out
    baseline) | reinforce_pp (returns-to-go whitened over the batch). The last three use no value model."""
    scale_rewards: bool = True
    """grpo: divide by the group's reward standard deviation (false: Dr. GRPO, mean-centred only)."""
    drop_equal_groups: bool = False
    """grpo / rloo: leave groups whose samples all scored the same out of the loss (DAPO's filter, no resampling)."""
    loss_aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    """token_mean (every token alike, DAPO) | seq_mean_token_mean (each response's token mean, GRPO) |
    seq_mean_token_sum_norm (token sums over max_new_tokens, Dr. GRPO)."""
    cliprange_high: float = 0.0
    """Upper ratio clip epsilon (DAPO's clip-higher, e.g. 0.28); 0: the same as cliprange."""
    kl_in: Literal["reward", "loss", "none"] = "reward"
    """Where the KL to the reference goes: reward (a per-token penalty, PPO / RLOO / REINFORCE++) | loss (added to
    the policy loss, GRPO) | none."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """Per-token KL estimator: k1 = log pi - log ref | k2 = k1^2 / 2 | k3 = exp(-k1) + k1 - 1 (GRPO's, >= 0)."""
    kl_coef: float = 0.05
    """Per-token KL penalty coefficient (start value when adaptive)."""
    adaptive_kl: bool = False
    """Ziegler et al. adaptive controller steering the per-sequence KL towards target_kl."""
    target_kl: float = 6.0
    """Target KL (nats per response) of the adaptive controller."""
    horizon: int = 10000
    """Adaptive controller horizon in samples."""
    gamma: float = 1.0
    """Discount."""
    lam: float = 0.95
    """GAE lambda."""
    cliprange: float = 0.2
    """Policy ratio clip epsilon."""
    cliprange_value: float = 0.2
    """Value clip range around the rollout's values."""
    vf_coef: float = 0.1
    """Value loss weight."""
    whiten_rewards: bool = False
    """Normalise per-token rewards over each rollout batch (scale only) before GAE."""
    ptx_coef: float = 0.0
    """PPO-ptx: weight of an SFT loss on `ptx_data` mixed into every step (InstructGPT)."""
    ptx_data: str | None = None
    """Demonstrations (conversations) for PPO-ptx."""
    value_head: Literal["shared", "separate"] = "shared"
    """shared (value head on the policy's trunk) | separate (a critic copy of the model with its own head)."""
    allow_biased_sampling: bool = False
    """Allow top_k / top_p / min_new_tokens, whose samples do not follow the policy's distribution."""

    checks: ClassVar[dict] = {
        "rollout_batch_size": at_least(1),
        "samples_per_prompt": at_least(1),
        "mini_batch_size": at_least(1),
        "ppo_epochs": at_least(1),
        "max_prompt_length": at_least(1),
        "max_new_tokens": at_least(1),
        "min_new_tokens": at_least(0),
        "temperature": POSITIVE,
        "top_k": at_least(0),
        "top_p": Check(lambda v: 0 < v <= 1, "in (0, 1]"),
        "kl_coef": NON_NEGATIVE,
        "target_kl": POSITIVE,
        "horizon": at_least(1),
        "gamma": UNIT,
        "lam": UNIT,
        "cliprange": POSITIVE,
        "cliprange_value": POSITIVE,
        "vf_coef": NON_NEGATIVE,
        "ptx_coef": NON_NEGATIVE,
        "cliprange_high": NON_NEGATIVE,
    }

    def check(self) -> list[tuple[str, str]]:
        bad = []
        if self.estimator in ("grpo", "rloo") and self.samples_per_prompt < 2:
            bad.append(
                ("samples_per_prompt", f"at least 2 for estimator={self.estimator} (a group to compare)")
            )
        if self.estimator != "gae" and self.value_head == "separate":
            bad.append(("value_head", f"shared: estimator={self.estimator} trains no value model"))
        if self.drop_equal_groups and self.estimator not in ("grpo", "rloo"):
            bad.append(("drop_equal_groups", "false unless estimator is grpo or rloo"))
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in self.rewards.values()):
            bad.append(("rewards", "a mapping of reward specs to numeric weights"))
        return bad

    @property
    def critic_free(self) -> bool:
        return self.estimator != "gae"

    @property
    def on_policy(self) -> bool:
        """One optimiser step per rollout batch of unbiased samples, no value model and no policy log-probs in the
        rewards: the policy that sampled is the one that trains, so the loss takes the old log-probs as the new
        ones detached (ratio exactly 1, as TRL's GRPO with num_iterations=1) and the rollout skips the policy's
        scoring forward (its KL figure uses the sampler's log-probs)."""
        return (
            self.critic_free
            and self.ppo_epochs == 1
            and self.mini_batch_size == self.rollout_batch_size
            and (self.kl_in != "reward" or (self.kl_coef == 0 and not self.adaptive_kl))
            and self.top_k == 0
            and self.top_p == 1.0
            and self.min_new_tokens == 0
        )
