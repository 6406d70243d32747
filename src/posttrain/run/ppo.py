"""`posttrain ppo`: RLHF step 3. Sample responses, score them, keep the policy near the SFT model, PPO-update.

    posttrain ppo --config ppo.yaml model=runs/sft/final ppo.reward=runs/rm/final data=prompts.jsonl
    posttrain ppo --config ppo.yaml ppo.reward=my_rewards:length_bonus peft.method=lora

Plugs into the one training loop: `PPOSource` (run/ppo_source.py) samples a rollout batch whenever its buffer is empty (policy and
reference log-probabilities, values, rewards, GAE) and then hands out its minibatches for `ppo_epochs` passes, one
optimiser step per minibatch; `PPOObjective` computes the clipped losses. Its state (prompt position, sampling RNG,
adaptive KL coefficient, the rollout buffer) makes resume exact.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from posttrain.artifacts.ppo import CRITIC_DIR, VALUE_HEAD_FILE, load_value_head, save_value_head  # noqa: F401
from posttrain.config import ConfigError, RolloutConfig, RunConfig
from posttrain.data.schema import PromptRow
from posttrain.objectives import verifiable
from posttrain.objectives.ppo import PolicyWithValue, PPOArgs, PPOObjective, RewardFn
from posttrain.run.ppo_source import PPOSource

STATE_DIR = "ppo_state"
"""Under output_dir: the source's torch-saved state files (the loop's checkpoints hold JSON only)."""


@dataclass
class PPOConfig(RunConfig):
    """`posttrain ppo`: PPO against a reward model or reward function, KL-regularised towards the SFT model."""

    ppo: PPOArgs = field(default_factory=PPOArgs)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)


GRPO = dict(
    estimator="grpo",
    samples_per_prompt=4,
    ppo_epochs=1,
    kl_in="loss",
    kl_estimator="k3",
    kl_coef=0.04,
    loss_aggregation="seq_mean_token_mean",
)
"""What `posttrain grpo` presets (DeepSeekMath's GRPO: group-normalised rewards, k3 KL in the loss with beta 0.04,
each response's token mean); every key can still be set."""

RLOO = dict(estimator="rloo", samples_per_prompt=4, ppo_epochs=1, kl_in="reward", kl_estimator="k1")
"""What `posttrain rloo` presets (Ahmadian et al. 2024: leave-one-out baseline, KL penalty in the reward)."""


@dataclass
class GRPOConfig(PPOConfig):
    """`posttrain grpo`: critic-free RL with group-normalised rewards (reward models, functions or the built-in
    checkers: ppo.reward=number), KL to the SFT model in the loss."""

    ppo: PPOArgs = field(default_factory=lambda: PPOArgs(**GRPO))


@dataclass
class RLOOConfig(PPOConfig):
    """`posttrain rloo`: critic-free RL with a leave-one-out baseline over k samples per prompt, KL in the reward."""

    ppo: PPOArgs = field(default_factory=lambda: PPOArgs(**RLOO))


COMMAND_CONFIGS = {"ppo": PPOConfig, "grpo": GRPOConfig, "rloo": RLOOConfig}


def check_args(args: PPOArgs, batch_size: int) -> None:
    """Refuse inconsistent sizes and (unless allowed) sampling that is not the policy's own distribution."""
    biased = [
        name
        for name, on in (
            ("top_k", args.top_k > 0),
            ("top_p", args.top_p < 1.0),
            ("min_new_tokens", args.min_new_tokens > 0),
        )
        if on
    ]
    if biased and not args.allow_biased_sampling:
        raise ConfigError(
            f"ppo.{biased[0]}: samples would not follow the policy's distribution, which PPO's "
            "ratios assume; remove it or set ppo.allow_biased_sampling=true"
        )
    if biased:
        warnings.warn(
            f"PPO with {', '.join(biased)}: samples differ from the policy's distribution", stacklevel=2
        )
    if args.rollout_batch_size % args.samples_per_prompt:
        raise ConfigError("ppo.rollout_batch_size must be a multiple of ppo.samples_per_prompt")
    if args.rollout_batch_size % args.mini_batch_size or args.mini_batch_size % batch_size:
        raise ConfigError(
            "ppo.mini_batch_size must divide ppo.rollout_batch_size and be a multiple of "
            f"train.batch_size ({batch_size})"
        )
    if args.value_head not in ("shared", "separate"):
        raise ConfigError(f"ppo.value_head must be shared | separate, got {args.value_head!r}")
    if args.temperature <= 0:
        raise ConfigError("ppo.temperature must be > 0")
    if args.adaptive_kl and args.kl_in != "reward":
        raise ConfigError("ppo.adaptive_kl steers a KL penalty in the reward: set ppo.kl_in=reward")


# --------------------------------------------------------------------------------------------------------------
# prompts and rewards


def load_reward(
    spec: str, tokenizer, device: torch.device | str = "cpu", terms: dict | None = None
) -> RewardFn:
    """The reward: `spec` (weight 1) plus every {spec: weight} of `terms`, summed. A spec is a built-in checker
    (exact | normalized | number [:FIELD], regex:PATTERN, length:MAX_TOKENS; `posttrain.objectives.verifiable`),
    a reward model directory, or `module:function` called as fn(prompts, responses, **meta) -> list[float].

    The function gets the prompts as the exact text the policy saw, and keyword columns `messages`, `prompt_ids`,
    `response_ids` plus every key found in the prompt rows' `meta` (None where a row lacks it). Any score that is
    NaN or infinite, or a function that raises, stops the run with a ValueError naming the prompt."""
    specs = ({spec: 1.0} if spec else {}) | dict(terms or {})
    if not specs:
        raise ConfigError(
            "ppo.reward: give a reward model directory, module:function or a built-in checker "
            f"({' | '.join(verifiable.BUILTINS)}), or ppo.rewards={{spec: weight}}"
        )
    parts = [(float(w), s, _reward_term(s, tokenizer, device)) for s, w in specs.items()]

    def score(rows: list[PromptRow], texts: list[str], response_ids: list[list[int]]) -> list[float]:
        total = [0.0] * len(texts)
        for weight, name, fn in parts:
            values = verifiable.checked(fn, name, rows, texts, response_ids)
            total = [t + weight * v for t, v in zip(total, values)]
        return total

    return score


def _reward_term(spec: str, tokenizer, device) -> RewardFn:
    """One reward spec as a batch function (see `load_reward`)."""
    name, _, arg = spec.partition(":")
    if name in verifiable.BUILTINS:
        key = {"regex": "pattern", "length": "max_tokens"}.get(name, "field")
        try:
            value = int(arg) if key == "max_tokens" else arg
            term = verifiable.builtin(name, **({key: value} if arg else {}))
        except ValueError as e:
            raise ConfigError(f"ppo.reward {spec!r}: {e}") from None
        return verifiable.batch(term)
    if Path(spec).is_dir():
        from posttrain.artifacts.reward import load_reward_model

        rm = load_reward_model(spec, device=str(device))

        def score_rm(rows: list[PromptRow], texts: list[str], response_ids: list[list[int]]) -> list[float]:
            prompts = [
                r.messages or [{"role": "user", "content": tokenizer.decode(r.ids, skip_special_tokens=True)}]
                for r in rows
            ]
            return rm.score_texts(rm.tokenizer, prompts, texts, rm.template)

        return score_rm
    if ":" not in spec:
        raise ConfigError(
            f"ppo.reward: {spec!r} is neither a directory, module:function nor a built-in checker "
            f"({' | '.join(verifiable.BUILTINS)})"
        )
    module, name = spec.rsplit(":", 1)
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"ppo.reward: cannot import {spec!r}: {e}") from e

    def score_fn(rows: list[PromptRow], texts: list[str], response_ids: list[list[int]]) -> list[float]:
        prompts = tokenizer.batch_decode([r.ids for r in rows])
        return fn(
            prompts,
            texts,
            messages=[r.messages for r in rows],
            prompt_ids=[r.ids for r in rows],
            response_ids=response_ids,
            **verifiable.meta_keys(rows),
        )

    return score_fn


def load_prompts(cfg: RunConfig, tokenizer) -> list[PromptRow]:
    """Prompt rows from `cfg.data`, read by `posttrain.data.prompts.prompt_messages` (prompt, messages with their
    replies dropped, instruction + input, or preference records' shared prompt) and encoded with the chat
    template; errors name file, line and field."""
    from posttrain.data.chat import encode_prompt
    from posttrain.data.prompts import prompt_messages
    from posttrain.data.readers import read_records
    from posttrain.data.schema import DataError

    rows = []
    for path, line, rec in read_records(cfg.data):
        msgs, _ = prompt_messages(rec, path, line, cfg.system_prompt)
        ids = encode_prompt(tokenizer, msgs, cfg.template)
        meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
        rows.append(PromptRow(ids, [m.to_dict() for m in msgs], meta, source=f"{path}:{line}"))
    if not rows:
        raise DataError(f"{cfg.data}: no prompts")
    return rows


# --------------------------------------------------------------------------------------------------------------
# building, saving, running


def _critic(cfg: PPOConfig, policy: torch.nn.Module) -> torch.nn.Module | None:
    """The separate critic: the one saved beside the policy this run starts from (`adapter:` or `model:` a
    `posttrain ppo` output), set up like the policy; else a copy of the starting policy."""
    from posttrain.run.common import setup_model

    if cfg.ppo.value_head != "separate":
        return None
    saved = Path(cfg.adapter or cfg.model.name) / CRITIC_DIR
    if not saved.is_dir():
        return copy.deepcopy(policy)
    where = {"adapter": str(saved)} if cfg.adapter else {"model": str(saved)}
    return setup_model(dataclasses.replace(cfg, **where), verbose=False)[0]


def objective_for(a: PPOArgs) -> PPOObjective:
    """The loss the `ppo:` section asks for: clip range(s), aggregation, KL in the loss, critic or not."""
    return PPOObjective(
        a.cliprange,
        a.cliprange_value,
        a.vf_coef,
        a.temperature,
        a.ptx_coef,
        cliprange_high=a.cliprange_high,
        aggregation=a.loss_aggregation,
        max_len=a.max_new_tokens,
        kl_coef=a.kl_coef if a.kl_in == "loss" else 0.0,
        kl_estimator=a.kl_estimator,
        critic=not a.critic_free,
        on_policy=a.on_policy,
    )


def build(cfg: PPOConfig) -> tuple[PolicyWithValue, Any, PPOObjective, PPOSource]:
    """Model (+ value head, critic, reference), tokenizer, objective and source for a config."""
    from posttrain.run.common import setup_model
    from posttrain.train import distributed

    a = cfg.ppo
    check_args(a, cfg.train.batch_size)
    distributed.init_from_env()  # under torchrun: join the process group (a no-op in one process)
    if cfg.rollout.backend == "vllm":  # refused before anything loads when vLLM cannot run here
        from posttrain.rollout_vllm import check_supported

        check_supported()
    policy, tokenizer = setup_model(cfg)
    if cfg.rollout.backend == "vllm":
        check_supported(policy)
    critic = _critic(cfg, policy)
    ref_model = None
    if cfg.peft.method == "none":  # full fine-tuning: the reference is a frozen copy of the starting model
        ref_model = copy.deepcopy(policy).requires_grad_(False).eval()
        ref_model = distributed.prepare_frozen(ref_model, cfg.train)  # sharded like the policy under fsdp
    model = PolicyWithValue(policy, critic)
    load_value_head(
        model, cfg.adapter or cfg.model.name
    )  # a `posttrain ppo` output's head, when starting from one
    prompts = load_prompts(cfg, tokenizer)
    for row in prompts:
        row.ids = row.ids[-a.max_prompt_length :]
    reward = load_reward(a.reward, tokenizer, next(policy.parameters()).device, a.rewards)
    ptx = _ptx_batches(cfg, tokenizer) if a.ptx_coef > 0 else None
    objective = objective_for(a)
    source = PPOSource(
        model,
        tokenizer,
        prompts,
        reward,
        a,
        cfg.train.batch_size,
        cfg.train.seed,
        ref_model,
        ptx,
        Path(cfg.output_dir) / STATE_DIR,
        backend=cfg.rollout.backend,
        **distributed.shard_args(),  # under torchrun: this rank's prompts, global whitening
    )
    return model, tokenizer, objective, source


def _ptx_batches(cfg: PPOConfig, tokenizer) -> list[dict[str, torch.Tensor]]:
    """PPO-ptx demonstrations as padded SFT micro-batches, cycled through one per micro-batch."""
    from posttrain.data.collate import pad_collate, tokenize_sft
    from posttrain.data.readers import read_conversations

    if not cfg.ppo.ptx_data:
        raise ConfigError("ppo.ptx_coef > 0 needs ppo.ptx_data (demonstrations)")
    convs = read_conversations(cfg.ppo.ptx_data, system_prompt=cfg.system_prompt)
    samples, _ = tokenize_sft(convs, tokenizer, cfg.template, cfg.train.max_length, cfg.train.truncation)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    n = cfg.train.batch_size
    return [pad_collate(samples[i : i + n], pad) for i in range(0, len(samples), n)]


def command_of(cfg: PPOConfig) -> str:
    return {GRPOConfig: "grpo", RLOOConfig: "rloo"}.get(type(cfg), "ppo")


def run(cfg: PPOConfig) -> dict[str, Any]:
    from posttrain.artifacts.ppo import save_policy_with_value
    from posttrain.run.common import claim, with_model_card
    from posttrain.train.loop import fit

    command = command_of(cfg)
    run_dir = claim(cfg, command)
    model, tokenizer, objective, source = build(cfg)
    out = run_dir.write()
    save_fn = lambda m, d: save_policy_with_value(m, tokenizer, cfg, d)  # noqa: E731
    result = fit(model, objective, source, cfg.train, out, save_fn=save_fn, log_extra=source.stats)
    return with_model_card(cfg, command, result)


def main(argv: list[str] | None = None, command: str = "ppo") -> int:
    from posttrain.run.common import config_command

    argv = list(sys.argv[1:] if argv is None else argv)
    cls = COMMAND_CONFIGS[command]
    check = lambda cfg: check_args(cfg.ppo, cfg.train.batch_size)  # noqa: E731  (bad sizes: a config error)
    return config_command(cls, run, argv, f"posttrain {command}", cls.__doc__, check=check)


def main_grpo(argv: list[str] | None = None) -> int:
    return main(argv, "grpo")


def main_rloo(argv: list[str] | None = None) -> int:
    return main(argv, "rloo")


__all__ = [
    "GRPOConfig",
    "PPOArgs",
    "PPOConfig",
    "RLOOConfig",
    "PPOSource",
    "PromptRow",
    "build",
    "check_args",
    "load_prompts",
    "load_reward",
    "load_value_head",
    "main",
    "main_grpo",
    "main_rloo",
    "objective_for",
    "run",
    "save_value_head",
]
