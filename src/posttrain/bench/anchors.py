"""The anchors' side of each benchmark: our copy of /work/shared/bench/anchor_*.py logic, returning a dict.

`sft_lora` / `sft_full`: TRL SFTTrainer (+ PEFT LoRA) on the same model and data as `posttrain.bench.sft`.
Needs the `[bench]` extra (trl, peft, datasets).
"""

from __future__ import annotations

from posttrain.bench.sft import sft_result
from posttrain.bench.workload import (
    anchor_args,
    anchor_lora,
    anchor_tokenizer,
    bench_model,
    sft_rows,
    train_anchor,
)


def _trl_sft(lora: bool) -> dict:
    from trl import SFTConfig, SFTTrainer

    tok, model = anchor_tokenizer(), bench_model()
    rows = [{"input_ids": ids, "completion_mask": [0] * p + [1] * (len(ids) - p)} for ids, p in sft_rows()]
    ntok = sum(len(r["input_ids"]) for r in rows)
    args = SFTConfig(
        per_device_train_batch_size=8,
        num_train_epochs=1,
        learning_rate=1e-4,
        max_length=512,
        completion_only_loss=True,
        packing=False,
        padding_free=False,
        dataloader_num_workers=0,
        **anchor_args(),
    )
    out, wall, cpu = train_anchor(SFTTrainer, model, args, rows, tok, anchor_lora() if lora else None)
    return sft_result("trl", lora, ntok, wall, cpu, out.training_loss, out.global_step)


def sft_lora() -> dict:
    return _trl_sft(lora=True)


def sft_full() -> dict:
    return _trl_sft(lora=False)
