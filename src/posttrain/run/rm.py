"""`posttrain rm --config rm.yaml key=value ...`: train a reward model on preference pairs or rankings.

The result directory is a transformers sequence-classification model (full fine-tuning) or a PEFT SEQ_CLS adapter
with `score` in modules_to_save, plus `reward_config.json` (`posttrain.artifacts.reward`);
`posttrain.artifacts.reward.load_reward_model(dir)` restores it. Held-out pairwise accuracy and mean margin (r_chosen - r_rejected) are logged from `eval_data` /
`eval_fraction`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

from posttrain.artifacts.reward import save_reward_model
from posttrain.config import RunConfig
from posttrain.data.preference import (
    PairSample,
    RankSample,
    pair_collate,
    ranking_collate,
    read_splits,
    to_pairs,
    tokenize_pairs,
    tokenize_rankings,
)
from posttrain.data.preference_batches import preference_batches
from posttrain.data.schema import Ranking
from posttrain.objectives.reward import (
    OBJECTIVES,
    PairwiseRewardObjective,
    RewardModel,
    RMArgs,
)
from posttrain.train import distributed


@dataclass
class RMConfig(RunConfig):
    """`posttrain rm`: reward model = LM trunk + scalar head, Bradley-Terry or Plackett-Luce."""

    rm: RMArgs = field(default_factory=RMArgs)


def tokenize_for(cfg: RMConfig, items: list, tok) -> tuple[list, object]:
    """Pairwise: every record as pairs (rankings expanded). Listwise: rankings kept; a pair is a 2-way
    ranking."""
    args = (tok, cfg.template, cfg.train.max_length, cfg.rm.prompt_floor)
    if cfg.rm.loss == "pairwise":
        return tokenize_pairs(to_pairs(items), *args)
    rankings = [x for x in items if isinstance(x, Ranking)]
    ranked, report = tokenize_rankings(rankings, *args) if rankings else ([], None)
    pairs, pair_report = tokenize_pairs([x for x in items if not isinstance(x, Ranking)], *args)
    ranked += [RankSample(p.prompt_ids, [p.chosen_ids, p.rejected_ids]) for p in pairs]
    return ranked, report or pair_report


@torch.no_grad()
def evaluate_rm(
    rm: RewardModel, samples: list[PairSample], pad_id: int, batch_size: int = 8
) -> dict[str, float]:
    """Held-out pairwise accuracy, mean margin and mean Bradley-Terry loss."""
    was_training = rm.training
    rm.eval()
    device = rm.score_head.weight.device
    objective, totals = PairwiseRewardObjective(), {"loss": 0.0, "accuracy": 0.0, "margin": 0.0}
    try:
        for i in range(0, len(samples), batch_size):
            batch = pair_collate(samples[i : i + batch_size], pad_id)
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            loss, m = objective.loss(rm, batch)
            totals["loss"] += float(loss)
            totals["accuracy"] += float(m["accuracy"])
            totals["margin"] += float(m["margin"])
    finally:
        rm.train(was_training)
    return {k: v / len(samples) for k, v in totals.items()}


def prepare(cfg: RMConfig):
    """Reward model, tokenizer, objective, batch source and held-out pairs (everything before `fit`)."""
    from posttrain.run.common import setup_model

    if cfg.rm.loss not in OBJECTIVES:
        raise ValueError(f"rm.loss must be one of {', '.join(OBJECTIVES)}, got {cfg.rm.loss!r}")
    distributed.init_from_env()  # under torchrun: join the process group (a no-op in one process)
    lm, tok = setup_model(cfg)
    rm = RewardModel(lm, cfg.rm.head_init_std, cfg.rm.likelihood_coef)
    train_items, eval_items = read_splits(
        cfg.data, cfg.data_format, cfg.system_prompt, cfg.eval_data, cfg.eval_fraction, cfg.train.seed
    )
    train_s, report = tokenize_for(cfg, train_items, tok)
    if report.prompt_truncated or report.response_truncated:
        print(
            f"rm: truncated {report.prompt_truncated} prompts and {report.response_truncated} responses of "
            f"{report.samples} samples to max_length {cfg.train.max_length}"
        )
    eval_s = (
        tokenize_pairs(to_pairs(eval_items), tok, cfg.template, cfg.train.max_length, cfg.rm.prompt_floor)[0]
        if eval_items
        else []
    )
    collate = pair_collate if cfg.rm.loss == "pairwise" else ranking_collate
    source = preference_batches(train_s, cfg.train, tok.pad_token_id, collate)
    return rm, tok, OBJECTIVES[cfg.rm.loss](cfg.rm), source, eval_s


def run(cfg: RMConfig) -> dict:
    from posttrain.run.common import claim, with_model_card
    from posttrain.train.loop import fit

    run_dir = claim(cfg, "rm")
    rm, tok, objective, source, eval_s = prepare(cfg)
    out = run_dir.write()
    pad_id, bs = tok.pad_token_id, cfg.train.batch_size
    eval_fn = (lambda m: evaluate_rm(m, eval_s, pad_id, bs)) if eval_s else None
    result = fit(
        rm,
        objective,
        source,
        cfg.train,
        out,
        eval_fn=eval_fn,
        save_fn=lambda m, d: save_reward_model(m, tok, cfg, d),
    )
    return with_model_card(cfg, "rm", result)


def main(argv: list[str] | None = None) -> int:
    from posttrain.run.common import config_command

    argv = list(sys.argv[1:] if argv is None else argv)
    return config_command(RMConfig, run, argv, "posttrain rm", __doc__.splitlines()[0])
