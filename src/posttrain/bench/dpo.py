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

import random
import tempfile
import time

import torch

from posttrain.bench.sft import LORA_TARGETS, VOCAB, bench_model, peak_rss_mib
from posttrain.data.preference import PairSample

N_PAIRS, BATCH, BETA, MIN_LEN, MAX_LEN = 256, 8, 0.1, 16, 128


def bench_texts(n: int = N_PAIRS, seed: int = 0) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, chosen, rejected) word numbers, drawn exactly as the anchor script draws its 't123' words."""
    g = random.Random(seed)

    def draw() -> list[int]:
        return [g.randrange(4, VOCAB) for _ in range(g.randint(MIN_LEN, MAX_LEN))]

    return [(draw(), draw(), draw()) for _ in range(n)]


def words(ids: list[int]) -> str:
    return " ".join(f"t{i}" for i in ids)


def anchor_tokenizer():
    """The anchor script's word-level tokenizer. Note: through transformers its special tokens t0/t1/t2 are
    matched inside words, so 't1581' becomes [t1, t0]: about half of the words are 2 tokens, and the anchor's
    sequences are ~1.5x longer than their word counts. `bench_pairs` uses the same ids, so both sides do the
    same work."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="t1", eos_token="t2", unk_token="t0")


def bench_pairs(n: int = N_PAIRS, seed: int = 0) -> list[PairSample]:
    """The anchor's pairs as the anchor's tokenizer encodes them; responses end in EOS as TRL's do."""
    tok = anchor_tokenizer()

    def ids(x: list[int]) -> list[int]:
        return tok(words(x))["input_ids"]

    eos = tok.eos_token_id
    return [PairSample(ids(p), [*ids(c), eos], [*ids(r), eos]) for p, c, r in bench_texts(n, seed)]


def run(share_prompt: bool = True, group_by_length: bool = True) -> dict:
    """posttrain's side: one epoch of DPO + LoRA through `fit`, reference = the model with adapters off."""
    from posttrain.config import TrainConfig
    from posttrain.data.preference import PreferenceBatches, pair_collate, shared_prompt_collate
    from posttrain.objectives.dpo import DPOArgs, DPOObjective
    from posttrain.peft import LoraConfig, PeftConfig, apply_peft
    from posttrain.train.loop import fit

    lora = LoraConfig(r=16, alpha=32, dropout=0.0, target_modules=LORA_TARGETS)
    model = apply_peft(bench_model(), PeftConfig(method="lora", lora=lora))
    train = TrainConfig(
        batch_size=BATCH, epochs=1.0, lr=1e-4, schedule="linear", progress=False, max_length=512
    )
    collate = shared_prompt_collate if share_prompt else pair_collate
    source = PreferenceBatches(
        bench_pairs(), BATCH, seed=train.seed, pad_id=1, collate=collate, group_by_length=group_by_length
    )
    objective = DPOObjective(DPOArgs(beta=BETA), ref="adapters_off")
    with tempfile.TemporaryDirectory() as out:
        t, cpu = time.perf_counter(), time.process_time()
        result = fit(model, objective, source, train, out)
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    return _result("posttrain", wall, cpu, float(result["final_loss"]), result["steps"])


def anchor() -> dict:
    """The anchor's side: TRL DPOTrainer + PEFT LoRA on the same model and pairs (anchor_dpo.py)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    tok = anchor_tokenizer()
    model = bench_model()
    rows = [{"prompt": words(p), "chosen": words(c), "rejected": words(r)} for p, c, r in bench_texts()]
    args = DPOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=BATCH,
        num_train_epochs=1,
        learning_rate=1e-4,
        beta=BETA,
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        max_length=512,
        seed=0,
    )
    peft = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
    )
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok, peft_config=peft
    )
    t, cpu = time.perf_counter(), time.process_time()
    out = trainer.train()
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    return _result("trl", wall, cpu, float(out.training_loss), out.global_step)


def _result(side: str, wall: float, cpu: float, final_loss: float, steps: int) -> dict:
    """final_loss: the mean training loss over the run on both sides (TRL's `training_loss`)."""
    return {
        "side": side,
        "workload": "dpo-lora",
        "pairs": N_PAIRS,
        "pairs_per_s": N_PAIRS / wall,
        "wall_s": wall,
        "cpu_s": cpu,
        "pairs_per_cpu_s": N_PAIRS / cpu,
        "peak_rss_mib": peak_rss_mib(),
        "final_loss": final_loss,
        "steps": steps,
        "threads": torch.get_num_threads(),
    }
