"""Preference evaluation: reward-model scores, win rates with bootstrap intervals, and KL to a reference policy.

    scores = reward_scores(rm, prompts, texts)                   # one float per (prompt, response)
    win_rate(scores_a, scores_b)                                 # {"win_rate": .62, "ci_low": .55, "ci_high": .69, ...}
    policy_kl(policy, reference, tok, prompts)                   # {"kl": 3.1, "kl_per_token": .12, ...}

Win rate of A over B on the same prompts: each prompt scores 1 when A's reward is higher, 0.5 on a tie, 0 otherwise;
the mean over prompts, with a percentile bootstrap interval (prompts resampled with replacement, seeded).

KL(policy || reference) is estimated on responses sampled from the policy (temperature 1): per response, the sum over
its tokens of log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t), averaged over responses (`kl`, nats per response)
and divided by the number of response tokens (`kl_per_token`). Both log-probabilities are recomputed with a full
forward pass, so a policy compared with itself gives exactly 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from posttrain.data.schema import Message


def _dicts(prompt: Sequence[Message | dict]) -> list[dict]:
    return [m.to_dict() if isinstance(m, Message) else dict(m) for m in prompt]


def reward_scores(
    rm,
    prompts: Sequence[Sequence[Message | dict]],
    responses: Sequence[str],
    tokenizer=None,
    template: str | None = None,
    batch_size: int = 16,
) -> list[float]:
    """Reward of `responses[i]` as the reply to `prompts[i]`, with the reward model's own tokenizer and template
    (as recorded by `load_reward_model`) unless given."""
    tok = tokenizer if tokenizer is not None else rm.tokenizer
    tpl = template if template is not None else getattr(rm, "template", "auto")
    return rm.score_texts(tok, [_dicts(p) for p in prompts], list(responses), tpl, batch_size)


def win_rate(
    scores_a: Sequence[float],
    scores_b: Sequence[float],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Win rate of A over B (ties 0.5) with a `level` percentile bootstrap interval over prompts."""
    if len(scores_a) != len(scores_b) or not scores_a:
        raise ValueError(
            f"win_rate needs two equal, non-empty score lists, got {len(scores_a)} and {len(scores_b)}"
        )
    a, b = torch.tensor(scores_a, dtype=torch.float64), torch.tensor(scores_b, dtype=torch.float64)
    outcome = (a > b).double() + 0.5 * (a == b).double()  # (N,) 1 win, 0.5 tie, 0 loss
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(outcome), (n_boot, len(outcome)), generator=gen)  # (n_boot, N)
    boot = outcome[idx].mean(1)
    tail = (1.0 - level) / 2
    return {
        "win_rate": outcome.mean().item(),
        "ci_low": torch.quantile(boot, tail).item(),
        "ci_high": torch.quantile(boot, 1.0 - tail).item(),
        "n": len(outcome),
        "wins": int((a > b).sum()),
        "ties": int((a == b).sum()),
        "losses": int((a < b).sum()),
    }


def sequence_logprobs(
    model,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 16,
) -> list[list[float]]:
    """log p(response token | prompt, earlier response tokens) for every response token, one list per row."""
    from posttrain.rollout import response_logprobs

    return response_logprobs(model, prompts, responses, pad_id, batch_size)


def kl_from_logprobs(
    policy_lp: Sequence[Sequence[float]], ref_lp: Sequence[Sequence[float]]
) -> dict[str, float]:
    """Sequence-level KL estimate (mean over responses of summed log-ratios) and its per-token version."""
    sums = [sum(p) - sum(r) for p, r in zip(policy_lp, ref_lp)]
    tokens = sum(len(p) for p in policy_lp)
    return {
        "kl": sum(sums) / max(1, len(sums)),
        "kl_per_token": sum(sums) / max(1, tokens),
        "responses": len(sums),
        "mean_response_tokens": tokens / max(1, len(sums)),
    }


def policy_kl(
    policy,
    reference,
    tokenizer,
    prompts: Sequence[Sequence[Message | dict]],
    template: str = "auto",
    max_new_tokens: int = 64,
    samples: int = 1,
    temperature: float = 1.0,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """KL(policy || reference) on `samples` responses per prompt sampled from the policy (same tokenizer).

    `reference=None`: the policy itself with its adapters switched off (what a PEFT run started from)."""
    from posttrain.eval.generation import respond

    repeated = [p for p in prompts for _ in range(samples)]
    ro = respond(
        policy, tokenizer, repeated, template, max_new_tokens, batch_size, temperature, seed, progress
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pol = sequence_logprobs(policy, ro.prompt_ids, ro.response_ids, pad, batch_size)
    if reference is None:
        from posttrain.peft import disable_adapters

        with disable_adapters(policy):
            ref = sequence_logprobs(policy, ro.prompt_ids, ro.response_ids, pad, batch_size)
    else:
        ref = sequence_logprobs(reference, ro.prompt_ids, ro.response_ids, pad, batch_size)
    return kl_from_logprobs(pol, ref)
