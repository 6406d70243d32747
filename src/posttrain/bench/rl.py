"""Benchmarks `rollout` and `rl-lora` (BENCHMARKS.md), ours and the anchor's side, each returning one dict.

    posttrain bench rollout            # our decode loop vs transformers generate(): new tokens / s (target >= 1.5x)
    posttrain bench rl-lora            # our GRPO + LoRA vs TRL GRPOTrainer + PEFT, same settings: completions / s
    posttrain bench rl-ppo             # our PPO (+ value head) on the same workload, against our GRPO (no TRL PPO)
    posttrain bench rollout --json     # our side alone; the last line is its JSON

The anchors' sides copy /work/shared/bench/anchor_generate.py and anchor_grpo.py exactly: the tiny Llama (vocab
4096, hidden 256, 4 layers, seed 0), 64 prompts of U[16, 64] random tokens (random.Random(0)).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from posttrain.bench.workload import (
    anchor_args,
    anchor_lora,
    anchor_tokenizer,
    bench_model,
    lora_peft,
    result,
    rl_prompts,
    setup,
    train_anchor,
    words,
)

anchor_model, anchor_prompts = bench_model, rl_prompts  # the names this module used to define


def sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------------------------
# rollout: 64 prompts left-padded in one batch, exactly 128 new tokens each, pure sampling at T = 1


def rollout_ours() -> dict[str, Any]:
    from posttrain.rollout import generate

    model, tok, prompts = bench_model(sampling=True).eval(), anchor_tokenizer(), rl_prompts()
    t = time.perf_counter()
    ro = generate(
        model, tok, prompts, max_new_tokens=128, min_new_tokens=128, temperature=1.0, batch_size=64, seed=0
    )
    sync()
    wall = time.perf_counter() - t
    n = sum(len(r) for r in ro.response_ids)
    return result("posttrain", "rollout", new_tokens=n, tokens_per_s=n / wall, wall_s=wall)


def rollout_anchor() -> dict[str, Any]:
    model, prompts = bench_model(sampling=True).eval(), rl_prompts()
    L = max(map(len, prompts))
    ids = torch.tensor([[1] * (L - len(p)) + p for p in prompts], device=setup().device)
    att = (ids != 1).long()
    with torch.no_grad():
        t = time.perf_counter()
        out = model.generate(
            input_ids=ids,
            attention_mask=att,
            max_new_tokens=128,
            min_new_tokens=128,
            do_sample=True,
            top_k=0,
            top_p=1.0,
            pad_token_id=1,
        )
        sync()
        wall = time.perf_counter() - t
    n = (out.shape[1] - L) * len(prompts)
    return result("transformers", "rollout", new_tokens=n, tokens_per_s=n / wall, wall_s=wall)


# --------------------------------------------------------------------------------------------------------------
# rl-lora: 64 prompts x 4 completions, 64 new tokens, reward = share of completion tokens with id < 100,
# 16 completions per rollout and per optimiser step, 1 epoch (16 steps), LoRA r16 a32 on all 7 projections


def share_below_100(prompts, responses, response_ids=None, **meta) -> list[float]:
    """The rl-lora reward (a `ppo.reward` callable): share of completion tokens with id < 100."""
    return [sum(t < 100 for t in ids) / max(1, len(ids)) for ids in response_ids]


RL_SETTINGS = dict(
    rollout_batch_size=16,
    samples_per_prompt=4,
    mini_batch_size=16,
    ppo_epochs=1,
    max_new_tokens=64,
    kl_coef=0.04,
)
"""Both rl-lora sides: 16 completions (4 prompts x 4) per rollout and per optimiser step, 1 pass, 64 new tokens,
KL coefficient 0.04 (TRL's beta)."""

GRPO_AS_TRL = dict(
    estimator="grpo",
    scale_rewards=True,  # TRL scale_rewards="group"
    loss_aggregation="token_mean",  # TRL loss_type="dapo": every token of the step alike
    kl_in="loss",
    kl_estimator="k3",  # TRL's per-token KL term with beta > 0
    cliprange=0.2,  # TRL epsilon (epsilon_high None: the same)
)
"""Our GRPO with the anchor's GRPOConfig defaults (TRL 1.16), so rl-lora compares one algorithm."""


def _rl_run(workload: str, estimator: dict[str, Any]) -> dict[str, Any]:
    from posttrain.config import TrainConfig
    from posttrain.objectives.ppo import PolicyWithValue
    from posttrain.peft import apply_peft
    from posttrain.run.ppo import PPOArgs, PPOSource, PromptRow, objective_for
    from posttrain.train.loop import fit

    tok = anchor_tokenizer()
    model = PolicyWithValue(apply_peft(bench_model(), lora_peft()))
    args = PPOArgs(**RL_SETTINGS, **estimator)

    def reward(rows, texts, response_ids):
        return share_below_100(None, texts, response_ids=response_ids)

    out = Path(tempfile.mkdtemp(prefix="bench-rl-"))
    source = PPOSource(
        model,
        tok,
        [PromptRow(p) for p in rl_prompts()],
        reward,
        args,
        micro_batch_size=16,
        seed=0,
        state_dir=out / "state",
    )
    cfg = TrainConfig(
        epochs=1.0,
        batch_size=16,
        lr=1e-4,
        schedule="linear",  # TRL: linear decay, no warmup, max_grad_norm 1.0, no weight decay
        progress=False,
        resume=False,
        mixed_precision=setup().mixed_precision,
        log_every=1000,
    )
    t = time.perf_counter()
    steps = fit(model, objective_for(args), source, cfg, out)["steps"]
    wall = time.perf_counter() - t
    n = steps * args.rollout_batch_size
    return result(
        "posttrain",
        workload,
        completions=n,
        steps=steps,
        completions_per_s=n / wall,
        wall_s=wall,
        last_reward=source.stats().get("reward"),
    )


def rl_lora_ours() -> dict[str, Any]:
    """GRPO (group-normalised rewards, k3 KL in the loss, token-mean loss) through the one training loop."""
    return _rl_run("rl-lora", GRPO_AS_TRL)


def rl_ppo_ours() -> dict[str, Any]:
    """PPO with a shared-trunk value head (GAE, k1 KL in the reward): the chapter's algorithm, which TRL no longer
    ships, so this row has no anchor; it is compared with our GRPO on the same workload."""
    return _rl_run("rl-ppo", {})


def rl_lora_anchor() -> dict[str, Any]:
    """TRL GRPOTrainer + PEFT LoRA, as anchor_grpo.py (needs the [bench] extra)."""
    from trl import GRPOConfig, GRPOTrainer

    tok, model = anchor_tokenizer(), bench_model()
    rows = [{"prompt": words(p)} for p in rl_prompts()]

    def reward(completions, **kw):
        return [
            sum(int(w[1:]) < 100 for w in c.split() if w[1:].isdigit()) / max(1, len(c.split()))
            for c in completions
        ]

    args = GRPOConfig(
        per_device_train_batch_size=16,
        num_generations=4,
        max_completion_length=64,
        num_train_epochs=1,
        learning_rate=1e-4,
        beta=0.04,
        **anchor_args(),
    )
    _, wall, _ = train_anchor(GRPOTrainer, model, args, rows, tok, anchor_lora(), reward_funcs=reward)
    n = len(rows) * args.num_generations
    return result("trl", "rl-lora", completions=n, completions_per_s=n / wall, wall_s=wall)
