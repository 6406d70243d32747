"""Workloads `sft-lora` and `sft-full` (BENCHMARKS.md): posttrain's side.

Tiny Llama (vocab 4096, hidden 256, 4 layers, random init seed 0), 512 random sequences of length U[32, 256]
(seed 0) whose first 30% is prompt (no loss), batch 8, 1 epoch, AdamW lr 1e-4 with linear decay (the anchor's
Trainer default), fp32 on CPU. `sft-lora`: LoRA r16 alpha 32 dropout 0 on q,k,v,o,gate,up,down.
Timed: the `fit` call (optimiser setup, every step, the final checkpoint); model and data building are not timed,
as on the anchor's side.
"""

from __future__ import annotations

import random
import resource
import tempfile
import time

import torch

VOCAB, N_SEQ, MIN_LEN, MAX_LEN, PROMPT_SHARE = 4096, 512, 32, 256, 0.3
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def bench_model():
    """The benchmark's base model, initialised exactly as the anchor does (torch seed 0 just before)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    random.seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
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


def bench_rows() -> list[tuple[list[int], int]]:
    """(ids, prompt length) per sequence, drawn exactly as the anchor draws them."""
    g = random.Random(0)
    rows = []
    for _ in range(N_SEQ):
        n = g.randint(MIN_LEN, MAX_LEN)
        p = int(n * PROMPT_SHARE)
        rows.append(([g.randrange(4, VOCAB) for _ in range(n)], p))
    return rows


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(lora: bool) -> dict:
    from posttrain.config import TrainConfig
    from posttrain.data.collate import IGNORE, Sample, SFTBatches
    from posttrain.objectives.sft import SFTObjective
    from posttrain.train.loop import fit

    model = bench_model()
    if lora:
        from posttrain.peft import LoraConfig, PeftConfig, apply_peft

        apply_peft(
            model,
            PeftConfig(
                method="lora", lora=LoraConfig(r=16, alpha=32, dropout=0.0, target_modules=LORA_TARGETS)
            ),
        )
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
        mixed_precision="no",
        resume=False,
    )
    source = SFTBatches(samples, cfg.batch_size, cfg.grad_accum, group_by_length=True, seed=0, pad_id=1)
    with tempfile.TemporaryDirectory() as out:
        t, cpu = time.perf_counter(), time.process_time()
        result = fit(model, SFTObjective(), source, cfg, out)
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    return {
        "side": "posttrain",
        "workload": "sft-lora" if lora else "sft-full",
        "tokens": ntok,
        "tokens_per_s": ntok / wall,
        "wall_s": wall,
        "cpu_s": cpu,
        "tokens_per_cpu_s": ntok / cpu,
        "peak_rss_mib": peak_rss_mib(),
        "final_loss": result["final_loss"],
        "steps": result["steps"],
        "threads": torch.get_num_threads(),
    }


def run_lora() -> dict:
    return run(lora=True)


def run_full() -> dict:
    return run(lora=False)
