"""Benchmarks `rollout` and `rl-lora` (BENCHMARKS.md), ours and the anchor's side, each returning one dict.

    posttrain bench rollout            # our decode loop vs transformers generate(): new tokens / s (target >= 1.5x)
    posttrain bench rl-lora            # our PPO (+ value head) + LoRA vs TRL GRPO + PEFT: completions / s (>= 1x)
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
    RL_PROMPTS,
    anchor_args,
    anchor_lora,
    anchor_tokenizer,
    bench_model,
    lora_peft,
    result,
    rl_prompts,
    train_anchor,
    words,
)

anchor_model, anchor_prompts = bench_model, rl_prompts  # the names this module used to define


# --------------------------------------------------------------------------------------------------------------
# rollout: 64 prompts left-padded in one batch, exactly 128 new tokens each, pure sampling at T = 1


def rollout_ours() -> dict[str, Any]:
    from posttrain.rollout import generate

    model, tok, prompts = bench_model().eval(), anchor_tokenizer(), rl_prompts()
    t = time.perf_counter()
    ro = generate(
        model, tok, prompts, max_new_tokens=128, min_new_tokens=128, temperature=1.0, batch_size=64, seed=0
    )
    wall = time.perf_counter() - t
    n = sum(len(r) for r in ro.response_ids)
    return result("posttrain", "rollout", new_tokens=n, tokens_per_s=n / wall, wall_s=wall)


def rollout_anchor() -> dict[str, Any]:
    model, prompts = bench_model().eval(), rl_prompts()
    L = max(map(len, prompts))
    ids = torch.tensor([[1] * (L - len(p)) + p for p in prompts])
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
        wall = time.perf_counter() - t
    n = (out.shape[1] - L) * len(prompts)
    return result("transformers", "rollout", new_tokens=n, tokens_per_s=n / wall, wall_s=wall)


# --------------------------------------------------------------------------------------------------------------
# rl-lora: 64 prompts x 4 completions, 64 new tokens, reward = share of completion tokens with id < 100,
# 16 completions per rollout and per optimiser step, 1 epoch (16 steps), LoRA r16 a32 on all 7 projections


def share_below_100(prompts, responses, response_ids=None, **meta) -> list[float]:
    """The rl-lora reward (a `ppo.reward` callable): share of completion tokens with id < 100."""
    return [sum(t < 100 for t in ids) / max(1, len(ids)) for ids in response_ids]


def rl_lora_ours() -> dict[str, Any]:
    """PPO with a shared-trunk value head (so one more forward than GRPO per rollout), KL coef 0.04 like the anchor's
    beta, through the one training loop."""
    from posttrain.config import TrainConfig
    from posttrain.objectives.ppo import PolicyWithValue, PPOObjective
    from posttrain.peft import apply_peft
    from posttrain.run.ppo import PPOArgs, PPOSource, PromptRow
    from posttrain.train.loop import fit

    tok = anchor_tokenizer()
    model = PolicyWithValue(apply_peft(bench_model(), lora_peft()))
    args = PPOArgs(
        rollout_batch_size=16,
        samples_per_prompt=4,
        mini_batch_size=16,
        ppo_epochs=1,
        max_new_tokens=64,
        kl_coef=0.04,
    )

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
        schedule="linear",
        progress=False,
        resume=False,
        mixed_precision="no",
        log_every=1000,
    )
    t = time.perf_counter()
    steps = fit(model, PPOObjective(), source, cfg, out)["steps"]
    wall = time.perf_counter() - t
    n = steps * args.rollout_batch_size
    return result(
        "posttrain",
        "rl-lora",
        completions=n,
        steps=steps,
        completions_per_s=n / wall,
        wall_s=wall,
        last_reward=source.stats().get("reward"),
    )


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
    n = RL_PROMPTS * args.num_generations
    return result("trl", "rl-lora", completions=n, completions_per_s=n / wall, wall_s=wall)
