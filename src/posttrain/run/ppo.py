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
import importlib
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from posttrain.config import ConfigError, RunConfig
from posttrain.objectives.ppo import PolicyWithValue, PPOObjective
from posttrain.run.ppo_source import PPOSource, PromptRow, RewardFn

VALUE_HEAD_FILE = "value_head.safetensors"
CRITIC_DIR = "critic"
STATE_DIR = "ppo_state"
"""Under output_dir: the source's torch-saved state files (the loop's checkpoints hold JSON only)."""


@dataclass
class PPOArgs:
    """`ppo:` section of `posttrain ppo` configs."""

    reward: str = ""
    """Reward model directory (from `posttrain rm`) or a Python callable `module:function` called as
    fn(prompts: list[str], responses: list[str], **meta) -> list[float]."""
    rollout_batch_size: int = 64
    """Responses sampled per rollout batch (= prompts x samples_per_prompt)."""
    samples_per_prompt: int = 1
    """Responses sampled for each prompt in a rollout batch."""
    mini_batch_size: int = 16
    """Responses per optimiser step (split into micro-batches of train.batch_size)."""
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
    value_head: str = "shared"
    """shared (value head on the policy's trunk) | separate (a critic copy of the model with its own head)."""
    allow_biased_sampling: bool = False
    """Allow top_k / top_p / min_new_tokens, whose samples do not follow the policy's distribution."""


@dataclass
class PPOConfig(RunConfig):
    """`posttrain ppo`: PPO against a reward model or reward function, KL-regularised towards the SFT model."""

    ppo: PPOArgs = field(default_factory=PPOArgs)


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


# --------------------------------------------------------------------------------------------------------------
# prompts and rewards


def load_reward(spec: str, tokenizer, device: torch.device | str = "cpu") -> RewardFn:
    """A reward model directory, or `module:function` called as fn(prompts, responses, **meta) -> list[float].

    The function gets the prompts as the exact text the policy saw, and keyword columns `messages`, `prompt_ids`,
    `response_ids` plus every key found in the prompt rows' `meta` (None where a row lacks it)."""
    if not spec:
        raise ConfigError("ppo.reward: give a reward model directory or a module:function")
    if Path(spec).is_dir():
        from posttrain.objectives.reward import load_reward_model

        rm = load_reward_model(spec, device=str(device))

        def score_rm(rows: list[PromptRow], texts: list[str], response_ids: list[list[int]]) -> list[float]:
            prompts = [
                r.messages or [{"role": "user", "content": tokenizer.decode(r.ids, skip_special_tokens=True)}]
                for r in rows
            ]
            return rm.score_texts(rm.tokenizer, prompts, texts, rm.template)

        return score_rm
    if ":" not in spec:
        raise ConfigError(f"ppo.reward: {spec!r} is neither a directory nor module:function")
    module, name = spec.rsplit(":", 1)
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"ppo.reward: cannot import {spec!r}: {e}") from e

    def score_fn(rows: list[PromptRow], texts: list[str], response_ids: list[list[int]]) -> list[float]:
        keys = sorted({k for r in rows for k in r.meta})
        meta = {k: [r.meta.get(k) for r in rows] for k in keys}
        prompts = tokenizer.batch_decode([r.ids for r in rows])
        out = fn(
            prompts,
            texts,
            messages=[r.messages for r in rows],
            prompt_ids=[r.ids for r in rows],
            response_ids=response_ids,
            **meta,
        )
        if len(out) != len(texts):
            raise ValueError(f"reward function {spec} returned {len(out)} scores for {len(texts)} responses")
        return [float(x) for x in out]

    return score_fn


def _prompt_field(rec: dict, path: str, line: int) -> list:
    from posttrain.data.schema import Message, messages_from

    raw = rec["prompt"]
    return [Message("user", raw)] if isinstance(raw, str) else messages_from(raw, path, line, "prompt")


def _messages_field(rec: dict, path: str, line: int) -> list:
    from posttrain.data.schema import messages_from

    msgs = messages_from(rec["messages"], path, line, "messages")
    while msgs and msgs[-1].role == "assistant":  # the demonstration's reply is not part of the prompt
        msgs = msgs[:-1]
    return msgs


def _preference_prompt(rec: dict, path: str, line: int) -> list:
    from posttrain.data.preference import parse_record

    return parse_record(rec, "auto", path, line).prompt  # pairs and HH transcripts: the shared turns


PROMPT_FIELDS = {"prompt": _prompt_field, "messages": _messages_field, "chosen": _preference_prompt}
"""Row key -> how that row becomes prompt messages (the first key a row has wins)."""


def load_prompts(cfg: RunConfig, tokenizer) -> list[PromptRow]:
    """Prompt rows from `cfg.data`: {"prompt": str | messages}, {"messages": [...]} (final assistant replies
    dropped) or preference rows ({"chosen", "rejected"} pairs or HH transcripts: their shared prompt), encoded with
    the chat template; errors name file, line and field."""
    from posttrain.data.chat import encode_prompt
    from posttrain.data.readers import read_records
    from posttrain.data.schema import DataError, Message, where

    rows = []
    for path, line, rec in read_records(cfg.data):
        key = next((k for k in PROMPT_FIELDS if k in rec), None)
        if key is None:
            raise DataError(
                f"{where(path, line, 'prompt')}: a PPO prompt row needs one of {', '.join(PROMPT_FIELDS)}"
            )
        msgs = PROMPT_FIELDS[key](rec, path, line)
        if not msgs:
            raise DataError(f"{where(path, line, key)}: no prompt messages")
        if cfg.system_prompt and msgs[0].role != "system":
            msgs = [Message("system", cfg.system_prompt), *msgs]
        ids = encode_prompt(tokenizer, msgs, cfg.template)
        meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
        rows.append(PromptRow(ids, [m.to_dict() for m in msgs], meta))
    if not rows:
        raise DataError(f"{cfg.data}: no prompts")
    return rows


# --------------------------------------------------------------------------------------------------------------
# building, saving, running


def save_value_head(model: PolicyWithValue, directory: str | Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().float().cpu().contiguous() for k, v in model.v_head.state_dict().items()}
    save_file(state, str(Path(directory) / VALUE_HEAD_FILE))


def load_value_head(model: PolicyWithValue, directory: str | Path) -> bool:
    """Restore the value head saved next to an adapter / model (returns False when there is none)."""
    from safetensors.torch import load_file

    path = Path(directory) / VALUE_HEAD_FILE
    if not path.exists():
        return False
    model.v_head.load_state_dict(load_file(str(path)))
    return True


def build(cfg: PPOConfig) -> tuple[PolicyWithValue, Any, PPOObjective, PPOSource]:
    """Model (+ value head, critic, reference), tokenizer, objective and source for a config."""
    from posttrain.run.common import setup_model
    from posttrain.train import distributed

    a = cfg.ppo
    check_args(a, cfg.train.batch_size)
    distributed.init_from_env()  # under torchrun: join the process group (a no-op in one process)
    torch.manual_seed(cfg.train.seed)
    policy, tokenizer = setup_model(cfg)
    critic = copy.deepcopy(policy) if a.value_head == "separate" else None
    ref_model = None
    if cfg.peft.method == "none":  # full fine-tuning: the reference is a frozen copy of the starting model
        ref_model = copy.deepcopy(policy).requires_grad_(False).eval()
    model = PolicyWithValue(policy, critic)
    if cfg.adapter:
        load_value_head(model, cfg.adapter)
    prompts = load_prompts(cfg, tokenizer)
    for row in prompts:
        row.ids = row.ids[-a.max_prompt_length :]
    reward = load_reward(a.reward, tokenizer, next(policy.parameters()).device)
    ptx = _ptx_batches(cfg, tokenizer) if a.ptx_coef > 0 else None
    objective = PPOObjective(a.cliprange, a.cliprange_value, a.vf_coef, a.temperature, a.ptx_coef)
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


def run(cfg: PPOConfig) -> dict[str, Any]:
    from posttrain.run.common import output_dir, save_final
    from posttrain.train.loop import fit

    model, tokenizer, objective, source = build(cfg)
    out = output_dir(cfg)

    def save_fn(m: PolicyWithValue, directory: str | Path) -> None:
        save_final(m.policy, tokenizer, cfg, directory)
        save_value_head(m, directory)
        if m.critic is not None:
            save_final(m.critic, tokenizer, cfg, Path(directory) / CRITIC_DIR)

    return fit(model, objective, source, cfg.train, out, save_fn=save_fn, log_extra=source.stats)


def main(argv: list[str] | None = None) -> int:
    from posttrain.run.common import config_command

    argv = list(sys.argv[1:] if argv is None else argv)
    check = lambda cfg: check_args(cfg.ppo, cfg.train.batch_size)  # noqa: E731  (bad sizes: a config error)
    return config_command(PPOConfig, run, argv, "posttrain ppo", PPOConfig.__doc__, check=check)


__all__ = [
    "PPOArgs",
    "PPOConfig",
    "PPOSource",
    "PromptRow",
    "build",
    "check_args",
    "load_prompts",
    "load_reward",
    "load_value_head",
    "main",
    "run",
    "save_value_head",
]
