"""The anchors' side of each benchmark: our copy of /work/shared/bench/anchor_*.py logic, returning a dict.

`sft_lora` / `sft_full`: TRL SFTTrainer (+ PEFT LoRA) on the same model and data as `posttrain.bench.sft`.
Needs the `[bench]` extra (trl, peft, datasets).
"""

from __future__ import annotations

import random
import tempfile
import time

import torch

from posttrain.bench.sft import LORA_TARGETS, VOCAB, bench_model, bench_rows, peak_rss_mib


def _trl_sft(lora: bool) -> dict:
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    random.seed(0)
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t1", eos_token="t2", unk_token="t0")
    model = bench_model()
    rows = [{"input_ids": ids, "completion_mask": [0] * p + [1] * (len(ids) - p)} for ids, p in bench_rows()]
    ntok = sum(len(r["input_ids"]) for r in rows)
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=8,
        num_train_epochs=1,
        learning_rate=1e-4,
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        max_length=512,
        completion_only_loss=True,
        packing=False,
        padding_free=False,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
        )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=peft_config,
    )
    t, cpu = time.perf_counter(), time.process_time()
    out = trainer.train()
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    return {
        "side": "trl",
        "workload": "sft-lora" if lora else "sft-full",
        "tokens": ntok,
        "tokens_per_s": ntok / wall,
        "wall_s": wall,
        "cpu_s": cpu,
        "tokens_per_cpu_s": ntok / cpu,
        "peak_rss_mib": peak_rss_mib(),
        "final_loss": out.training_loss,
        "steps": out.global_step,
        "threads": torch.get_num_threads(),
    }


def sft_lora() -> dict:
    return _trl_sft(lora=True)


def sft_full() -> dict:
    return _trl_sft(lora=False)
