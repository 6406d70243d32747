"""Benchmarks `rollout` and `rl-lora` (BENCHMARKS.md), ours and the anchor's side, each returning one dict.

    posttrain bench rollout            # our decode loop vs transformers generate(): new tokens / s (target >= 1.5x)
    posttrain bench rl-lora            # our PPO (+ value head) + LoRA vs TRL GRPO + PEFT: completions / s (>= 1x)
    posttrain bench rollout --json     # our side alone; the last line is its JSON

The anchors' sides copy /work/shared/bench/anchor_generate.py and anchor_grpo.py exactly: the tiny Llama (vocab
4096, hidden 256, 4 layers, seed 0), 64 prompts of U[16, 64] random tokens (random.Random(0)).
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

V = 4096
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def anchor_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=1,
        eos_token_id=2,
        bos_token_id=3,
    )
    return LlamaForCausalLM(cfg)


def anchor_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({f"t{i}": i for i in range(V)}, unk_token="t0"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="t1", eos_token="t2", unk_token="t0")


def anchor_prompts(n: int = 64) -> list[list[int]]:
    g = random.Random(0)
    return [[g.randrange(4, V) for _ in range(g.randint(16, 64))] for _ in range(n)]


# --------------------------------------------------------------------------------------------------------------
# rollout: 64 prompts left-padded in one batch, exactly 128 new tokens each, pure sampling at T = 1


def rollout_ours() -> dict[str, Any]:
    from posttrain.rollout import generate

    model, tok, prompts = anchor_model().eval(), anchor_tokenizer(), anchor_prompts()
    t = time.perf_counter()
    ro = generate(
        model, tok, prompts, max_new_tokens=128, min_new_tokens=128, temperature=1.0, batch_size=64, seed=0
    )
    wall = time.perf_counter() - t
    n = sum(len(r) for r in ro.response_ids)
    return {
        "side": "posttrain",
        "workload": "rollout",
        "new_tokens": n,
        "tokens_per_s": n / wall,
        "wall_s": wall,
        "peak_rss_mib": _peak_rss_mib(),
        "threads": torch.get_num_threads(),
    }


def rollout_anchor() -> dict[str, Any]:
    model, prompts = anchor_model().eval(), anchor_prompts()
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
    return {
        "side": "transformers",
        "workload": "rollout",
        "new_tokens": n,
        "tokens_per_s": n / wall,
        "wall_s": wall,
        "peak_rss_mib": _peak_rss_mib(),
        "threads": torch.get_num_threads(),
    }


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
    from posttrain.peft import LoraConfig, PeftConfig, apply_peft
    from posttrain.run.ppo import PPOArgs, PPOSource, PromptRow
    from posttrain.train.loop import fit

    tok = anchor_tokenizer()
    lora = LoraConfig(r=16, alpha=32.0, dropout=0.0, target_modules=LORA_TARGETS)
    model = PolicyWithValue(apply_peft(anchor_model(), PeftConfig(method="lora", lora=lora)))
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
        [PromptRow(p) for p in anchor_prompts()],
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
    result = fit(model, PPOObjective(), source, cfg, out)
    wall = time.perf_counter() - t
    n = result["steps"] * args.rollout_batch_size
    return {
        "side": "posttrain",
        "workload": "rl-lora",
        "completions": n,
        "steps": result["steps"],
        "completions_per_s": n / wall,
        "wall_s": wall,
        "peak_rss_mib": _peak_rss_mib(),
        "last_reward": source.stats().get("reward"),
        "threads": torch.get_num_threads(),
    }


def rl_lora_anchor() -> dict[str, Any]:
    """TRL GRPOTrainer + PEFT LoRA, as anchor_grpo.py (needs the [bench] extra)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    tok = anchor_tokenizer()
    model = anchor_model()
    g = random.Random(0)
    rows = [
        {"prompt": " ".join(f"t{g.randrange(4, V)}" for _ in range(g.randint(16, 64)))} for _ in range(64)
    ]

    def reward(completions, **kw):
        return [
            sum(int(w[1:]) < 100 for w in c.split() if w[1:].isdigit()) / max(1, len(c.split()))
            for c in completions
        ]

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=16,
        num_generations=4,
        max_completion_length=64,
        num_train_epochs=1,
        learning_rate=1e-4,
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        beta=0.04,
    )
    peft = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=peft,
    )
    t = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t
    n = 64 * 4
    return {
        "side": "trl",
        "workload": "rl-lora",
        "completions": n,
        "completions_per_s": n / wall,
        "wall_s": wall,
        "peak_rss_mib": _peak_rss_mib(),
        "threads": torch.get_num_threads(),
    }
