"""Workload `dpo-lora` (/work/shared/BENCHMARKS.md): DPO with LoRA on the standard tiny Llama, on CPU.

256 pairs of random tokens (prompt U[16,128], chosen / rejected U[16,128], drawn exactly like the anchor
script), batch 8, beta 0.1, LoRA r16 alpha32 on q,k,v,o,gate,up,down, AdamW lr 1e-4, 1 epoch. Anchor: TRL
DPOTrainer + PEFT, the logic of /work/shared/bench/anchor_dpo.py (`anchor` below).

    posttrain bench dpo-lora                 # both sides, each in its own subprocess, and the ratio
    posttrain bench dpo-lora --json          # posttrain's side only, in this process

Timed on both sides: the training call only (model and data building are not timed).

What makes ours fast: reference log-probs from the same model with adapters off under no_grad in the same
step; one row [prompt, chosen, rejected] per pair with a 4D attention mask, so the prompt is computed once,
not twice; padding to the batch's longest row (batches grouped by length); only the positions that predict
response tokens go through the LM head.
"""

from __future__ import annotations

import tempfile
import time

from posttrain.bench.workload import (
    DPO_PAIRS,
    anchor_args,
    anchor_lora,
    anchor_tokenizer,
    bench_model,
    dpo_texts,
    lora_peft,
    setup,
    train_anchor,
    training_result,
    words,
)
from posttrain.data.preference import PairSample

N_PAIRS, BATCH, BETA = DPO_PAIRS, 8, 0.1
bench_texts = dpo_texts  # the name this module used to define


def bench_pairs(n: int | None = None, seed: int = 0) -> list[PairSample]:
    """The anchor's pairs as the anchor's tokenizer encodes them; responses end in EOS as TRL's do."""
    tok = anchor_tokenizer()

    def ids(x: list[int]) -> list[int]:
        return tok(words(x))["input_ids"]

    eos = tok.eos_token_id
    return [PairSample(ids(p), [*ids(c), eos], [*ids(r), eos]) for p, c, r in dpo_texts(n, seed)]


def run(share_prompt: bool = True, group_by_length: bool = True) -> dict:
    """posttrain's side: one epoch of DPO + LoRA through `fit`, reference = the model with adapters off."""
    from posttrain.config import TrainConfig
    from posttrain.data.preference import PreferenceBatches, pair_collate, shared_prompt_collate
    from posttrain.objectives.dpo import DPOArgs, DPOObjective
    from posttrain.peft import apply_peft
    from posttrain.train.loop import fit

    model = apply_peft(bench_model(), lora_peft())
    train = TrainConfig(
        batch_size=BATCH,
        epochs=1.0,
        lr=1e-4,
        schedule="linear",
        progress=False,
        max_length=512,
        mixed_precision=setup().mixed_precision,
    )
    collate = shared_prompt_collate if share_prompt else pair_collate
    source = PreferenceBatches(
        bench_pairs(), BATCH, seed=train.seed, pad_id=1, collate=collate, group_by_length=group_by_length
    )
    objective = DPOObjective(DPOArgs(beta=BETA), ref="initial_policy")
    with tempfile.TemporaryDirectory() as out:
        t, cpu = time.perf_counter(), time.process_time()
        result = fit(model, objective, source, train, out)
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    return _result("posttrain", wall, cpu, float(result["final_loss"]), result["steps"])


def anchor() -> dict:
    """The anchor's side: TRL DPOTrainer + PEFT LoRA on the same model and pairs (anchor_dpo.py)."""
    from trl import DPOConfig, DPOTrainer

    tok, model = anchor_tokenizer(), bench_model()
    rows = [{"prompt": words(p), "chosen": words(c), "rejected": words(r)} for p, c, r in dpo_texts()]
    args = DPOConfig(
        per_device_train_batch_size=BATCH,
        num_train_epochs=1,
        learning_rate=1e-4,
        beta=BETA,
        max_length=512,
        **anchor_args(),
    )
    out, wall, cpu = train_anchor(DPOTrainer, model, args, rows, tok, anchor_lora())
    return _result("trl", wall, cpu, float(out.training_loss), out.global_step)


def _result(side: str, wall: float, cpu: float, final_loss: float, steps: int) -> dict:
    """final_loss: the mean training loss over the run on both sides (TRL's `training_loss`)."""
    pairs = setup().n(N_PAIRS)
    return training_result(side, "dpo-lora", "pairs", pairs, wall, cpu, final_loss, steps)
