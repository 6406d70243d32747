"""Workloads `sft-lora` and `sft-full` (BENCHMARKS.md): posttrain's side.

Tiny Llama (vocab 4096, hidden 256, 4 layers, random init seed 0), 512 random sequences of length U[32, 256]
(seed 0) whose first 30% is prompt (no loss), batch 8, 1 epoch, AdamW lr 1e-4 with linear decay (the anchor's
Trainer default), fp32 on CPU. `sft-lora`: LoRA r16 alpha 32 dropout 0 on q,k,v,o,gate,up,down.
Timed: the `fit` call (optimiser setup, every step, the final checkpoint); model and data building are not timed,
as on the anchor's side.
"""

from __future__ import annotations

import tempfile
import time

from posttrain.bench.workload import (  # noqa: F401  (bench_model, bench_rows, ... used to live here)
    LORA_TARGETS,
    VOCAB,
    bench_model,
    lora_peft,
    peak_rss_mib,
    setup,
    training_result,
)
from posttrain.bench.workload import sft_rows as bench_rows


def run(lora: bool) -> dict:
    from posttrain.config import TrainConfig
    from posttrain.data.collate import IGNORE, Sample, SFTBatches
    from posttrain.objectives.sft import SFTObjective
    from posttrain.train.loop import fit

    model = bench_model()
    if lora:
        from posttrain.peft import apply_peft

        apply_peft(model, lora_peft())
    samples = [Sample(ids, [IGNORE] * p + ids[p:]) for ids, p in bench_rows()]
    ntok = sum(len(s) for s in samples)
    cfg = TrainConfig(
        epochs=1,
        batch_size=8,
        lr=1e-4,
        schedule="linear",
        max_grad_norm=1.0,
        progress=False,
        group_by_length=True,
        seed=0,
        mixed_precision=setup().mixed_precision,
        resume=False,
    )
    source = SFTBatches(samples, cfg.batch_size, cfg.grad_accum, group_by_length=True, seed=0, pad_id=1)
    with tempfile.TemporaryDirectory() as out:
        t, cpu = time.perf_counter(), time.process_time()
        done = fit(model, SFTObjective(), source, cfg, out)
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    return sft_result("posttrain", lora, ntok, wall, cpu, done["final_loss"], done["steps"])


def sft_result(
    side: str, lora: bool, ntok: int, wall: float, cpu: float, final_loss: float, steps: int
) -> dict:
    """Either side's sft-lora / sft-full result."""
    return training_result(
        side, "sft-lora" if lora else "sft-full", "tokens", ntok, wall, cpu, final_loss, steps
    )


def run_lora() -> dict:
    return run(lora=True)


def run_full() -> dict:
    return run(lora=False)
