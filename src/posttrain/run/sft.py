"""`posttrain sft --config run.yaml key=value ...`: supervised fine-tuning (instruction tuning).

conversations (any supported format) -> samples with assistant-only labels -> SFTBatches -> fit -> final/
"""

from __future__ import annotations

import json
import random
import sys

import torch

from posttrain.config import ConfigError, SFTConfig
from posttrain.train.loop import fit


def split_eval(convs: list, fraction: float, seed: int) -> tuple[list, list]:
    """Seeded hold-out of `fraction` of the conversations (at least one when fraction > 0)."""
    if fraction <= 0:
        return convs, []
    if not 0 < fraction < 1:
        raise ConfigError(f"eval_fraction must be in [0, 1), got {fraction}")
    idx = list(range(len(convs)))
    random.Random(seed).shuffle(idx)
    n = max(1, int(round(fraction * len(convs))))
    held = set(idx[:n])
    return [c for i, c in enumerate(convs) if i not in held], [c for i, c in enumerate(convs) if i in held]


def load_samples(cfg: SFTConfig, tokenizer) -> tuple[list, list]:
    """(train samples, eval samples), with the tokenisation report printed for each."""
    from posttrain.data.collate import tokenize_sft
    from posttrain.data.readers import read_conversations

    convs = read_conversations(cfg.data, cfg.data_format, cfg.system_prompt)
    if cfg.eval_data:
        train, held = convs, read_conversations(cfg.eval_data, cfg.data_format, cfg.system_prompt)
    else:
        train, held = split_eval(convs, cfg.eval_fraction, cfg.train.seed)
    out = []
    for name, part in (("train", train), ("eval", held)):
        if not part:
            out.append([])
            continue
        samples, report = tokenize_sft(
            part, tokenizer, cfg.template, cfg.train.max_length, cfg.train.truncation
        )
        print(f"{name} data: {json.dumps(report)}", file=sys.stderr, flush=True)
        out.append(samples)
    return out[0], out[1]


def eval_loss_fn(samples: list, pad_id: int, batch_size: int):
    """eval_fn for the loop: token-weighted SFT loss (and perplexity) over the held-out samples."""
    from posttrain.data.collate import pad_collate
    from posttrain.objectives.sft import SFTObjective

    objective = SFTObjective()
    ordered = sorted(samples, key=len)  # similar lengths together: little padding

    def evaluate(model) -> dict[str, float]:
        device = next(model.parameters()).device
        total, units = torch.zeros((), device=device), 0
        for i in range(0, len(ordered), batch_size):
            batch = {k: v.to(device) for k, v in pad_collate(ordered[i : i + batch_size], pad_id).items()}
            total += objective.loss(model, batch)[0].float()
            units += objective.units(batch)
        loss = total.item() / max(units, 1)
        return {"loss": loss, "ppl": float(torch.tensor(loss).exp())}

    return evaluate


def run(cfg: SFTConfig) -> dict:
    """The whole SFT run; returns fit's final metrics."""
    from posttrain.data.collate import SFTBatches
    from posttrain.objectives.sft import SFTObjective
    from posttrain.run.common import claim, save_final, setup_model, with_model_card
    from posttrain.train import distributed

    distributed.init_from_env()  # under torchrun: join the process group (a no-op in one process)
    run_dir = claim(cfg, "sft")
    model, tokenizer = setup_model(cfg)
    train, held = load_samples(cfg, tokenizer)
    t = cfg.train
    source = SFTBatches(
        train,
        t.batch_size,
        t.grad_accum,
        packing=t.packing,
        group_by_length=t.group_by_length,
        seed=t.seed,
        pad_id=tokenizer.pad_token_id,
        **distributed.shard_args(),
    )
    out = run_dir.write()
    result = fit(
        model,
        SFTObjective(),
        source,
        t,
        out,
        eval_fn=eval_loss_fn(held, tokenizer.pad_token_id, t.batch_size) if held else None,
        save_fn=lambda m, d: save_final(m, tokenizer, cfg, d),
    )
    return with_model_card(cfg, "sft", result)


def main(argv: list[str] | None = None) -> int:
    from posttrain.run.common import config_command

    argv = list(sys.argv[1:] if argv is None else argv)
    return config_command(SFTConfig, run, argv, "posttrain sft", __doc__.splitlines()[0])
