"""`posttrain dpo --config dpo.yaml key=value ...`: direct preference optimisation (dpo | ipo | simpo).

Where the reference log-probs come from (see `reference_plan`):
  - training an adapter (peft.method != none): the same model with its adapters switched off, under no_grad in
    the same step; one extra forward and no second model in memory. When an `adapter:` (e.g. an SFT LoRA) is
    loaded as the starting point, `run.common.setup_model` merges it into the base first, so "adapters off" is
    exactly the SFT policy, not the raw base;
  - peft.method = none (full fine-tuning, or training a loaded `adapter:` further): the starting policy's
    log-probs, precomputed once before the first update with every adapter ON (switching adapters off there
    would give the raw base model, not the SFT policy that DPO must stay close to);
  - `dpo.ref_model: path`: a separate frozen model (per step, or precomputed with `dpo.precompute_ref=true`).
Precomputed values are written to `output_dir/ref_logps.pt` with a fingerprint of the data, so a resumed run
reads them back instead of recomputing them from an already-updated policy.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from posttrain.config import RunConfig
from posttrain.data.preference import (
    PairSample,
    pair_collate,
    read_splits,
    shared_prompt_collate,
    to_pairs,
    tokenize_pairs,
)
from posttrain.data.preference_batches import preference_batches
from posttrain.modeling import takes_custom_4d_mask
from posttrain.objectives.dpo import (
    NEEDS_REFERENCE,
    DPOArgs,
    DPOObjective,
    evaluate_pairs,
    precompute_reference,
)
from posttrain.train import distributed
from posttrain.train.distributed import is_main

REF_FILE = "ref_logps.pt"


@dataclass
class DPOConfig(RunConfig):
    """`posttrain dpo`: preference optimisation without a reward model."""

    dpo: DPOArgs = field(default_factory=DPOArgs)


def reference_plan(cfg: DPOConfig) -> str:
    """none (SimPO) | initial_policy | precompute (starting policy) | ref_model | ref_model_precompute."""
    if not NEEDS_REFERENCE[cfg.dpo.loss]:
        return "none"
    if cfg.dpo.ref_model:
        return "ref_model_precompute" if cfg.dpo.precompute_ref else "ref_model"
    if cfg.dpo.precompute_ref or cfg.peft.method == "none":
        return "precompute"
    return "initial_policy"


def pick_collate(cfg: DPOConfig, model: torch.nn.Module, max_length: int):
    """shared_prompt_collate where a custom 4D mask computes the same thing as separate rows, else
    pair_collate."""
    if cfg.dpo.share_prompt and takes_custom_4d_mask(model, max_length):
        return shared_prompt_collate
    return pair_collate


def _fingerprint(samples: list[PairSample], ref_name: str) -> str:
    h = hashlib.sha256(ref_name.encode())
    for s in samples:
        h.update(json.dumps([s.prompt_ids, s.chosen_ids, s.rejected_ids]).encode())
    return h.hexdigest()


def load_or_precompute(
    model: torch.nn.Module,
    samples: list[PairSample],
    path: Path,
    pad_id: int,
    batch_size: int,
    ref_name: str,
    collate=None,
) -> bool:
    """Fill every sample's ref_chosen / ref_rejected from `path` when its fingerprint matches, else compute
    them with `model` as it is now and write `path`. Returns True when the values were read back."""
    key = _fingerprint(samples, ref_name)
    if path.exists():
        saved = torch.load(path, weights_only=True)
        if saved["fingerprint"] == key:
            for s, c, r in zip(samples, saved["chosen"].tolist(), saved["rejected"].tolist()):
                s.ref_chosen, s.ref_rejected = c, r
            return True
    precompute_reference(model, samples, pad_id, batch_size, ref="self", collate=collate)
    if not is_main():  # every rank computed the same values; one writes them
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "fingerprint": key,
            "chosen": torch.tensor([s.ref_chosen for s in samples]),
            "rejected": torch.tensor([s.ref_rejected for s in samples]),
        },
        tmp,
    )
    tmp.replace(path)
    return False


def _reference(cfg: DPOConfig, model, samples: list[PairSample], pad_id: int, collate):
    """Set up the reference for `reference_plan(cfg)`; returns what DPOObjective takes as `ref`."""
    plan = reference_plan(cfg)
    if plan in ("none", "initial_policy"):
        return None if plan == "none" else "initial_policy"
    ref_model = model
    if plan.startswith("ref_model"):
        from posttrain.run.common import load_for_inference

        device = str(next(model.parameters()).device)
        ref_model, _ = load_for_inference(cfg.dpo.ref_model, dtype=cfg.dtype, device=device)
        ref_model.requires_grad_(False).eval()
        if plan == "ref_model":  # called every step: sharded like the policy under train.strategy=fsdp
            return distributed.prepare_frozen(ref_model, cfg.train)
    path = Path(cfg.output_dir) / REF_FILE
    load_or_precompute(
        ref_model, samples, path, pad_id, cfg.train.batch_size, cfg.dpo.ref_model or "policy@0", collate
    )
    return None  # every batch now carries ref_logps


def prepare(cfg: DPOConfig):
    """Model, tokenizer, objective, batch source and held-out samples of a DPO run (everything before
    `fit`)."""
    from posttrain.run.common import setup_model

    distributed.init_from_env()  # under torchrun: join the process group (a no-op in one process)
    model, tok = setup_model(cfg)
    train_items, eval_items = read_splits(
        cfg.data, cfg.data_format, cfg.system_prompt, cfg.eval_data, cfg.eval_fraction, cfg.train.seed
    )

    def tokenize(items: list) -> tuple:
        return tokenize_pairs(
            to_pairs(items, cfg.dpo.pairs), tok, cfg.template, cfg.train.max_length, cfg.dpo.prompt_floor
        )

    train_s, report = tokenize(train_items)
    eval_s, _ = tokenize(eval_items) if eval_items else ([], None)
    if report.prompt_truncated or report.response_truncated:
        print(
            f"dpo: truncated {report.prompt_truncated} prompts and {report.response_truncated} responses of "
            f"{report.samples} pairs to max_length {cfg.train.max_length}"
        )
    pad_id, collate = tok.pad_token_id, pick_collate(cfg, model, cfg.train.max_length)
    ref = _reference(cfg, model, train_s + eval_s, pad_id, collate)
    objective = DPOObjective(cfg.dpo, ref=ref)
    source = preference_batches(train_s, cfg.train, pad_id, collate)
    return model, tok, objective, source, eval_s


def run(cfg: DPOConfig) -> dict:
    from posttrain.run.common import claim, save_final, with_model_card
    from posttrain.train.loop import fit

    run_dir = claim(cfg, "dpo")
    model, tok, objective, source, eval_s = prepare(cfg)
    out = run_dir.write()
    pad_id, bs = tok.pad_token_id, cfg.train.batch_size
    collate = source.collate
    eval_fn = (lambda m: evaluate_pairs(m, objective, eval_s, pad_id, bs, collate)) if eval_s else None
    result = fit(
        model,
        objective,
        source,
        cfg.train,
        out,
        eval_fn=eval_fn,
        save_fn=lambda m, d: save_final(m, tok, cfg, d),
    )
    return with_model_card(cfg, "dpo", result)


def main(argv: list[str] | None = None) -> int:
    from posttrain.run.common import config_command

    argv = list(sys.argv[1:] if argv is None else argv)
    return config_command(DPOConfig, run, argv, "posttrain dpo", __doc__.splitlines()[0])
