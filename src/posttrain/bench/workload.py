"""What every benchmark shares (/work/shared/BENCHMARKS.md): the base model, LoRA, the anchors' word-level
tokenizer, the seeded data generators, and the figures every result dict carries.

    model = bench_model()                      # tiny Llama, random init, torch seed 0
    rows = sft_rows()                          # sft-lora / sft-full: (ids, prompt length) x 512
    triples = dpo_texts()                      # dpo-lora: (prompt, chosen, rejected) word numbers x 256
    prompts = rl_prompts()                     # rollout / rl-lora: 64 prompts of U[16, 64] ids

Each generator draws exactly as the matching anchor script does (same `random.Random(0)` call order), so both
sides train on the same data.

`setup()` reads where the workloads run from the environment, so that every side (each its own subprocess) agrees:
POSTTRAIN_BENCH_SHAPE (`bench`, the BENCHMARKS.md model; `0.5b` / `1b`, Qwen2.5-0.5B's and Llama-3.2-1B's shapes as
Llama configs; `tiny`, for testing the GPU suite on a CPU), POSTTRAIN_BENCH_DEVICE (`cpu`, `cuda`),
POSTTRAIN_BENCH_DTYPE (`fp32`, or `bf16`: bf16 autocast over fp32 weights when training, on both sides; bf16
weights when only sampling) and POSTTRAIN_BENCH_SCALE (a share of every workload's data, 1 = BENCHMARKS.md's). The
defaults are BENCHMARKS.md's CPU workloads.
"""

from __future__ import annotations

import os
import random
import resource
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch

VOCAB = 4096
"""Vocabulary of the benchmark model and of the anchors' word-level tokenizer (words t0 .. t4095)."""
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_R, LORA_ALPHA = 16, 32
SFT_SEQUENCES, SFT_MIN_LEN, SFT_MAX_LEN, SFT_PROMPT_SHARE = 512, 32, 256, 0.3
DPO_PAIRS, DPO_MIN_LEN, DPO_MAX_LEN = 256, 16, 128
RL_PROMPTS, RL_MIN_LEN, RL_MAX_LEN = 64, 16, 64


SHAPES: dict[str, dict[str, Any]] = {
    "bench": dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=4),
    "tiny": dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
    "0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
}  # fmt: skip
"""Llama configs by name: the BENCHMARKS.md model, a smaller one for tests, and two real models' shapes (the word
tokenizer uses ids below 4096; the larger heads still cost their full width)."""


@dataclass(frozen=True)
class Setup:
    shape: str = "bench"
    device: str = "cpu"
    dtype: str = "fp32"
    scale: float = 1.0

    @property
    def mixed_precision(self) -> str:
        """TrainConfig.mixed_precision for our training sides."""
        return "bf16" if self.dtype == "bf16" else "no"

    def n(self, count: int, least: int = 1) -> int:
        """`count` items at this scale, at least `least`."""
        return max(least, round(count * self.scale))


def setup() -> Setup:
    """Where the workloads run (POSTTRAIN_BENCH_SHAPE / _DEVICE / _DTYPE / _SCALE; module docstring)."""
    env = os.environ.get
    got = Setup(
        shape=env("POSTTRAIN_BENCH_SHAPE", "bench"),
        device=env("POSTTRAIN_BENCH_DEVICE", "cpu"),
        dtype=env("POSTTRAIN_BENCH_DTYPE", "fp32"),
        scale=float(env("POSTTRAIN_BENCH_SCALE", "1")),
    )
    if got.shape not in SHAPES or got.dtype not in ("fp32", "bf16") or not 0 < got.scale <= 1:
        raise ValueError(
            f"bad benchmark setup {got}: shape in {sorted(SHAPES)}, dtype fp32|bf16, 0 < scale <= 1"
        )
    return got


def bench_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        **SHAPES[setup().shape], max_position_embeddings=512, pad_token_id=1, eos_token_id=2, bos_token_id=3
    )


def bench_model(sampling: bool = False):
    """The benchmark's base model, initialised exactly as the anchors do (torch seed 0 just before), on the setup's
    device; in bf16 weights when `sampling` under a bf16 setup."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    random.seed(0)
    s = setup()
    model = LlamaForCausalLM(bench_config())
    dtype = torch.bfloat16 if sampling and s.dtype == "bf16" else torch.float32
    return model.to(s.device, dtype) if (s.device, dtype) != ("cpu", torch.float32) else model


def lora_peft():
    """posttrain's PeftConfig for the benchmarks' LoRA (r16, alpha 32, dropout 0, all seven projections)."""
    from posttrain.peft import LoraConfig, PeftConfig

    lora = LoraConfig(r=LORA_R, alpha=LORA_ALPHA, dropout=0.0, target_modules=LORA_TARGETS)
    return PeftConfig(method="lora", lora=lora)


def anchor_lora():
    """The same LoRA as a PEFT `LoraConfig` for the anchors (needs the [bench] extra)."""
    from peft import LoraConfig

    return LoraConfig(
        r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
    )


def anchor_tokenizer():
    """The anchor scripts' word-level tokenizer over 't0' .. 't4095' (pad t1, eos t2, unk t0). Note: through
    transformers its special tokens are matched inside words, so 't1581' becomes [t1, t0]."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="t1", eos_token="t2", unk_token="t0")


def anchor_args() -> dict[str, Any]:
    """Keyword arguments every TRL anchor config shares: CPU, fp32, no saving, no logging, no progress bar, seed 0.

    fp32 because the workloads are fp32 (BENCHMARKS.md) and posttrain's side is: TRL 1.16 configs default to
    bf16=True, i.e. bf16 autocast even on CPU, which is 5x slower on a CPU without native bf16 (AMD EPYC, AVX2:
    TRL GRPO 0.86 vs 4.44 completions/s over 3 steps) and faster on one with AMX, so the default made the ratio
    depend on the machine and compare two precisions."""
    s = setup()
    return {
        "bf16": s.dtype == "bf16",
        "output_dir": tempfile.mkdtemp(prefix="bench-anchor-"),
        "logging_steps": 1000,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": s.device == "cpu",
        "disable_tqdm": True,
        "seed": 0,
    }


def train_anchor(trainer_cls, model, args, rows: list[dict], tokenizer, peft_config, **kw) -> tuple:
    """Build a TRL trainer on `rows` and time its `train()` only: (train output, wall s, CPU s)."""
    from datasets import Dataset

    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        **kw,
    )
    t, cpu = time.perf_counter(), time.process_time()
    out = trainer.train()
    return out, time.perf_counter() - t, time.process_time() - cpu


def words(ids: list[int]) -> str:
    """Word numbers as the anchors' text: [5, 17] -> 't5 t17'."""
    return " ".join(f"t{i}" for i in ids)


# --------------------------------------------------------------------------------------------------------------
# seeded data, drawn as the anchor scripts draw it


def sft_rows(n: int | None = None, seed: int = 0) -> list[tuple[list[int], int]]:
    """sft-lora / sft-full: (ids, prompt length) per sequence; lengths U[32, 256], the first 30% is prompt."""
    g = random.Random(seed)
    rows = []
    for _ in range(setup().n(SFT_SEQUENCES) if n is None else n):
        length = g.randint(SFT_MIN_LEN, SFT_MAX_LEN)
        rows.append(([g.randrange(4, VOCAB) for _ in range(length)], int(length * SFT_PROMPT_SHARE)))
    return rows


def dpo_texts(n: int | None = None, seed: int = 0) -> list[tuple[list[int], list[int], list[int]]]:
    """dpo-lora: (prompt, chosen, rejected) word numbers, each U[16, 128] words."""
    g = random.Random(seed)

    def draw() -> list[int]:
        return [g.randrange(4, VOCAB) for _ in range(g.randint(DPO_MIN_LEN, DPO_MAX_LEN))]

    return [(draw(), draw(), draw()) for _ in range(setup().n(DPO_PAIRS) if n is None else n)]


def rl_prompts(n: int | None = None, seed: int = 0) -> list[list[int]]:
    """rollout / rl-lora: prompts of U[16, 64] random ids."""
    g = random.Random(seed)
    n = setup().n(RL_PROMPTS, least=4) if n is None else n  # 4 prompts x 4 samples: one step of 16
    return [[g.randrange(4, VOCAB) for _ in range(g.randint(RL_MIN_LEN, RL_MAX_LEN))] for _ in range(n)]


# --------------------------------------------------------------------------------------------------------------
# results


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def result(side: str, workload: str, **figures: Any) -> dict[str, Any]:
    """One side's result dict: side, workload, its figures, then peak RSS, torch threads, the setup (when not the
    default) and the peak CUDA memory (when CUDA was used)."""
    s = setup()
    out = {
        "side": side,
        "workload": workload,
        **figures,
        "peak_rss_mib": peak_rss_mib(),
        "threads": torch.get_num_threads(),
    }
    if s != Setup():
        out["setup"] = {"shape": s.shape, "device": s.device, "dtype": s.dtype, "scale": s.scale}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def training_result(
    side: str, workload: str, unit: str, n: int, wall: float, cpu: float, final_loss: float, steps: int
) -> dict[str, Any]:
    """A training workload's result: `n` units (tokens, pairs) in `wall` / `cpu` seconds, and where it ended."""
    return result(
        side,
        workload,
        **{unit: n, f"{unit}_per_s": n / wall, "wall_s": wall, "cpu_s": cpu, f"{unit}_per_cpu_s": n / cpu},
        final_loss=final_loss,
        steps=steps,
    )
