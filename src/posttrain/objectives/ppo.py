"""PPO for RLHF (Ouyang et al. 2022; Ziegler et al. 2019): small pure functions, the value model, the objective.

Shapes: B rows, R response tokens. Every per-token tensor is *response-aligned*: column j is about response token j
(its log-probability given everything before it, the value of the state just before it, ...). `mask` (B, R) is True
on real response tokens (a prefix of each row).

    rewards, kl = kl_penalised_rewards(scores, logp, ref_logp, mask, kl_coef)   # reward at the last token
    adv, ret = gae(rewards, values, mask, gamma, lam)
    pg, clipfrac, approx_kl = policy_loss(new_logp, logp, whiten(adv, mask), mask, cliprange)
    vf, vf_clipfrac = value_loss(new_values, values, ret, mask, cliprange_value)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from posttrain.data.schema import PromptRow
from posttrain.modeling import head_weight, lm_forward, response_columns, token_logprobs  # noqa: F401 (re-exported)
from posttrain.objectives.advantages import aggregate, kl_estimate, masked_mean, whiten
from posttrain.objectives.ppo_args import PPOArgs

# --------------------------------------------------------------------------------------------------------------
# what a reward is (the `ppo:` config section is `PPOArgs`, in ppo_args.py)

RewardFn = Callable[[list[PromptRow], list[str], list[list[int]]], list[float]]
"""(prompt rows, response texts, response token ids) -> one score per response."""


# --------------------------------------------------------------------------------------------------------------
# pure functions


def entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / T) per position. (B, R, V) -> (B, R)."""
    logp = (logits.float() / temperature).log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def kl_penalised_rewards(
    scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards -kl_coef * (logp - ref_logp), plus the sequence score at each row's last real token.

    scores (B,), the rest (B, R) -> (rewards (B, R), kl (B, R)); kl is the k1 estimator, 0 off the mask.
    """
    mask = mask.to(logp.dtype)
    kl = (logp - ref_logp) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)  # (B,)
    rewards = rewards.scatter_add(1, last[:, None], scores.to(rewards.dtype)[:, None])
    return rewards * mask, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the response (the value after the last real token is 0).

    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lam * A_{t+1};  returns = A + V.
    (B, R) x3 -> (advantages (B, R), returns (B, R)), both 0 off the mask.
    """
    mask = mask.to(values.dtype)
    B, R = rewards.shape
    advantages = torch.zeros_like(values)
    next_adv = torch.zeros(B, dtype=values.dtype, device=values.device)
    next_value = torch.zeros_like(next_adv)
    for t in reversed(range(R)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        next_value = values[:, t] * mask[:, t]
        advantages[:, t] = next_adv
    return advantages, (advantages + values) * mask


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    low: float,
    high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token max(-A r, -A clip(r, 1 - low, 1 + high)), r = exp(logp - old) (high = low unless given: DAPO's
    clip-higher), and where the clipped term won (B, R)."""
    ratio = (logp - old_logp).exp()
    high = low if not high else high
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - low, 1.0 + high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    cliprange_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate, *summed* over masked tokens: max(-A r, -A clip(r, 1-eps, 1+eps)), r = exp(logp - old).

    Returns (loss_sum, clipped-token count, approx-KL sum with 0.5 * (logp - old)^2), all scalars.
    """
    mask = mask.to(logp.dtype)
    loss, clipped = clipped_surrogate(logp, old_logp, advantages, cliprange, cliprange_high)
    approx_kl = (0.5 * (logp - old_logp) ** 2 * mask).sum().detach()
    return (loss * mask).sum(), (clipped.to(logp.dtype) * mask).sum().detach(), approx_kl


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss summed over masked tokens: 0.5 * max((V - R)^2, (V_clip - R)^2),
    V_clip = old + clip(V - old, -c, c). Returns (loss_sum, clipped-token count)."""
    mask = mask.to(values.dtype)
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    a, b = (values - returns) ** 2, (clipped_values - returns) ** 2
    loss = 0.5 * torch.maximum(a, b)
    return (loss * mask).sum(), ((b > a).to(values.dtype) * mask).sum().detach()


# --------------------------------------------------------------------------------------------------------------
# KL coefficient controllers


@dataclass
class FixedKL:
    value: float
    """The KL penalty coefficient (never changes)."""

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


@dataclass
class AdaptiveKL:
    """Ziegler et al. (2019): beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon."""

    value: float
    """Current coefficient (starts at the configured kl_coef)."""
    target: float
    """KL (nats per sequence) the controller steers towards."""
    horizon: int
    """Samples over which the coefficient can change by up to 20%."""

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


# --------------------------------------------------------------------------------------------------------------
# the model PPO trains: policy LM + value head


def _hidden_size(model: nn.Module) -> int:
    return head_weight(model).shape[-1]


class PolicyWithValue(nn.Module):
    """The policy LM and a scalar value head: on the policy's own last hidden state (shared trunk), or on a separate
    critic LM (`critic`, e.g. a copy of the SFT model). The value head is float32 and zero-initialised."""

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        for lm in (self.policy, self.critic):
            if lm is not None:
                lm.gradient_checkpointing_enable(**kwargs)

    def enable_input_require_grads(self) -> None:
        for lm in (self.policy, self.critic):
            if lm is not None:
                lm.enable_input_require_grads()

    def __init__(self, policy: nn.Module, critic: nn.Module | None = None):
        super().__init__()
        self.policy = policy
        self.critic = critic
        hidden = _hidden_size(critic if critic is not None else policy)
        ref = next(policy.parameters())
        self.v_head = nn.Linear(hidden, 1, device=ref.device, dtype=torch.float32)
        nn.init.zeros_(self.v_head.weight)
        nn.init.zeros_(self.v_head.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cols: int | slice,
        tokens: torch.Tensor | None = None,
        temperature: float = 1.0,
        packed: dict[str, torch.Tensor] | None = None,
    ) -> tuple[Any, torch.Tensor]:
        """At columns `cols` (an int k: the last k; or a slice): the logits (B, C, V), or with `tokens` (B, C) their
        (log-probs, entropies) (B, C) each, chunked through the head (`posttrain.head_logprobs`); and the values
        (B, C) float32. With `packed` (`posttrain.objectives.group_rows`) the rows run packed per prompt group."""
        from posttrain.head_logprobs import column_logprobs, states_at

        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        cols = slice(-cols, None) if isinstance(cols, int) else cols
        if tokens is None:
            out = lm_forward(self.policy, batch, select=cols)
            scores, states = out.logits, out.hidden[:, cols]
        else:
            logp, ent, states = column_logprobs(
                self.policy, {**batch, "packed": packed}, cols, tokens, temperature, entropy=True
            )
            scores = (logp, ent)
        if self.critic is not None:
            states = states_at(self.critic, {**batch, "packed": packed}, cols)
        values = self.v_head(states.float()).squeeze(-1)
        return scores, values


def response_forward(
    model: PolicyWithValue, batch: dict[str, torch.Tensor], temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probs of the response tokens at `temperature`, their entropies (no grad) and the values: (B, R) each.

    Rows are [left-padded prompt (P) | response (R)], so the distribution over response token j comes from column
    P - 1 + j: the last R + 1 columns without the final one (`response_columns`).
    """
    cols = response_columns(batch["response"].shape[1])
    (logp, ent), values = model(
        batch["input_ids"],
        batch["attention_mask"],
        batch["position_ids"],
        cols,
        batch["response"],
        temperature,
        batch.get("packed"),
    )
    return logp, ent, values


# --------------------------------------------------------------------------------------------------------------
# the objective the one training loop calls


@dataclass
class PPOObjective:
    """Clipped policy loss (+ clipped value loss with a critic) on a minibatch of one rollout batch; optional KL to
    the reference in the loss and a PPO-ptx SFT term.

    A micro-batch holds input_ids, attention_mask, position_ids (B, P+R), response (B, R), mask (B, R) and the
    rollout's logprobs, values, advantages, returns (B, R) (ref_logprobs too with a KL in the loss); optionally
    `ptx` (an SFT batch). Units are response tokens (token_mean) or responses (the two sequence means), so the
    sums below become the chosen mean once the loop divides by the step's units.
    """

    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    temperature: float = 1.0
    ptx_coef: float = 0.0
    name: str = "ppo"
    cliprange_high: float = 0.0
    aggregation: str = "token_mean"
    max_len: int = 0
    """The response length limit (seq_mean_token_sum_norm divides each response's token sum by it)."""
    kl_coef: float = 0.0
    """Weight of the per-token KL estimate in the loss (kl_in=loss); 0: none."""
    kl_estimator: str = "k3"
    critic: bool = True
    """False for the critic-free estimators: no value loss."""
    on_policy: bool = False
    """The minibatch is the whole rollout, trained once (`PPOArgs.on_policy`): old log-probs = new ones detached."""

    def units(self, batch: dict[str, Any]) -> int:
        if self.aggregation == "token_mean":
            return int(batch["mask"].sum())
        return int(batch["mask"].any(1).sum())

    def loss(self, model: PolicyWithValue, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        mask = batch["mask"]
        logp, ent, values = response_forward(model, batch, self.temperature)
        old = logp.detach() if self.on_policy else batch["logprobs"]
        per_token, clipped = clipped_surrogate(
            logp, old, batch["advantages"], self.cliprange, self.cliprange_high
        )
        pg, _ = aggregate(per_token, mask, self.aggregation, self.max_len)
        loss = pg
        metrics = {"policy_loss": pg.item()}
        if self.kl_coef > 0:
            kl_tok = kl_estimate(logp, batch["ref_logprobs"], self.kl_estimator)
            kl, _ = aggregate(kl_tok, mask, self.aggregation, self.max_len)
            loss = loss + self.kl_coef * kl
            metrics["kl_loss"] = kl.item()
        if self.critic:
            vf, vf_clipped = value_loss(values, batch["values"], batch["returns"], mask, self.cliprange_value)
            if (
                self.aggregation != "token_mean"
            ):  # value loss per token, averaged the same way as the policy's
                vf = vf * self.units(batch) / mask.sum().clamp(min=1)
            loss = loss + self.vf_coef * vf
            metrics.update(value_loss=vf.item(), vf_clipfrac=vf_clipped.item())
        with torch.no_grad():  # logged as the loss is averaged: per token, or per response's token mean
            for key, per in (
                ("clipfrac", clipped.float()),
                ("approx_kl", 0.5 * (logp - old) ** 2),
                ("entropy", ent),
            ):
                metrics[key] = aggregate(per, mask, self.aggregation, self.max_len)[0].item()
        if self.ptx_coef > 0 and "ptx" in batch:
            n = float(self.units(batch))
            ptx = _sft_mean_loss(model.policy, batch["ptx"])
            loss = loss + self.ptx_coef * ptx * n
            metrics["ptx_loss"] = ptx.item() * n
        return loss, metrics


def _sft_mean_loss(policy: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled tokens of a padded SFT batch (labels -100 = no loss)."""
    from posttrain.objectives.sft import SFTObjective, sft_loss

    return sft_loss(policy, batch) / max(SFTObjective().units(batch), 1)


def kl_controller(kl_coef: float, adaptive: bool, target: float, horizon: int) -> FixedKL | AdaptiveKL:
    return AdaptiveKL(kl_coef, target, horizon) if adaptive else FixedKL(kl_coef)


__all__ = [
    "AdaptiveKL",
    "PPOArgs",
    "RewardFn",
    "FixedKL",
    "PPOObjective",
    "PolicyWithValue",
    "entropy",
    "gae",
    "kl_controller",
    "kl_penalised_rewards",
    "masked_mean",
    "clipped_surrogate",
    "policy_loss",
    "response_forward",
    "value_loss",
    "whiten",
]
