"""Critic-free advantage estimators, KL estimators and loss aggregation for policy-gradient RL.

Responses come in groups of k consecutive rows that share a prompt. `scores` (B,) is one reward per response;
per-token tensors are (B, R), response-aligned, with `mask` True on real response tokens.

    adv = group_advantages(scores, k, "grpo")               # (B,): (r - group mean) / (group std + eps)
    adv = group_advantages(scores, k, "rloo")               # (B,): r - mean of the other k - 1 rewards
    adv = reinforce_pp(token_rewards, mask)                 # (B, R): returns-to-go, whitened over the batch
    keep = ~equal_groups(scores, k)                         # DAPO: drop groups whose rewards are all equal
    kl = kl_estimate(logp, ref_logp, "k3")                  # per token, >= 0, unbiased for KL(pi || ref)
    loss, units = aggregate(per_token_loss, mask, "token_mean")

Definitions (worked examples in tests/test_advantages.py):
- grpo (Shao et al. 2024): A_i = (r_i - mean_g) / (std_g + eps), std the sample (n - 1) standard deviation as in
  TRL's GRPOTrainer; with `scale=False` (Dr. GRPO, Liu et al. 2025) A_i = r_i - mean_g.
- rloo (Ahmadian et al. 2024): A_i = r_i - (sum_g - r_i) / (k - 1) = k / (k - 1) (r_i - mean_g).
- reinforce_pp (Hu 2025): G_t = sum_{s >= t} gamma^(s-t) r_s over per-token rewards (the KL penalty on every token,
  the score on the last), then (G - mean) / std over every real token of the batch.
- k1 = log pi - log ref (unbiased, can be negative); k2 = (log pi - log ref)^2 / 2; k3 = exp(log ref - log pi) -
  (log ref - log pi) - 1 (unbiased and >= 0, Schulman 2020; GRPO's KL in the loss).
- aggregation: token_mean = sum of every token's loss / token count (DAPO); seq_mean_token_mean = the mean over
  responses of each response's token mean (the original GRPO); seq_mean_token_sum_norm = each response's token sum
  over a constant `max_len`, averaged over responses (Dr. GRPO: no length bias).
"""

from __future__ import annotations

import torch

ESTIMATORS = ("gae", "grpo", "rloo", "reinforce_pp")
KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def _groups(scores: torch.Tensor, k: int) -> torch.Tensor:
    if k < 1 or scores.shape[0] % k:
        raise ValueError(f"{scores.shape[0]} responses do not split into groups of {k}")
    return scores.float().view(-1, k)


def group_advantages(
    scores: torch.Tensor, k: int, estimator: str, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """One advantage per response (B,) from its group's rewards: grpo or rloo (see the module docstring)."""
    g = _groups(scores, k)
    mean = g.mean(1, keepdim=True)
    if estimator == "grpo":
        adv = g - mean
        if scale:
            std = g.std(1, keepdim=True) if k > 1 else torch.zeros_like(mean)
            adv = adv / (std + eps)
    elif estimator == "rloo":
        if k < 2:
            raise ValueError("rloo needs at least 2 samples per prompt (a leave-one-out baseline)")
        adv = g - (g.sum(1, keepdim=True) - g) / (k - 1)
    else:
        raise ValueError(f"group estimator must be grpo | rloo, got {estimator!r}")
    return adv.reshape(-1)


def equal_groups(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(B,) True on every response of a group whose k rewards are all equal (zero advantage, no learning signal)."""
    g = _groups(scores, k)
    return (g == g[:, :1]).all(1, keepdim=True).expand_as(g).reshape(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (population std); with shift_mean=False the mean is added back."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1} over each row's real tokens; 0 off the mask."""
    mask = mask.to(rewards.dtype)
    out = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * running) * mask[:, t]
        out[:, t] = running
    return out


def reinforce_pp(
    rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, eps: float = 1e-8
) -> torch.Tensor:
    """REINFORCE++ advantages (B, R): returns-to-go of the per-token rewards, whitened over the batch's tokens."""
    return whiten(returns_to_go(rewards, mask, gamma), mask.to(rewards.dtype), eps=eps)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from the sampled tokens' log-probs: k1 | k2 | k3."""
    d = logp - ref_logp
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d**2
    if kind == "k3":
        return torch.expm1(-d) + d  # exp(ref - logp) - (ref - logp) - 1, written to stay accurate near 0
    raise ValueError(f"kl estimator must be one of {' | '.join(KL_ESTIMATORS)}, got {kind!r}")


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, mode: str, max_len: int | None = None
) -> tuple[torch.Tensor, int]:
    """(loss sum, units) such that the training loop's sum / units over a step is the `mode` mean."""
    mask = mask.to(per_token.dtype)
    tokens = (per_token * mask).sum(1)  # (B,)
    if mode == "token_mean":
        return tokens.sum(), int(mask.sum())
    if mode == "seq_mean_token_mean":
        return (tokens / mask.sum(1).clamp(min=1)).sum(), per_token.shape[0]
    if mode == "seq_mean_token_sum_norm":
        if not max_len:
            raise ValueError("seq_mean_token_sum_norm needs max_len (the response length limit)")
        return tokens.sum() / max_len, per_token.shape[0]
    raise ValueError(f"loss aggregation must be one of {' | '.join(AGGREGATIONS)}, got {mode!r}")
