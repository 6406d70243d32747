"""What each PEFT method saves: SFT on the `sft-lora` workload (/work/shared/BENCHMARKS.md) once per method.

Full fine-tuning, LoRA (r16 alpha32 on q,k,v,o,gate,up,down), QLoRA (the same LoRA on the base quantised to NF4
with double quantisation, `model.quantization=nf4`), bottleneck adapters (Houlsby, reduction 16), prefix
tuning (16 virtual tokens) and prompt tuning (16 soft tokens) on the standard tiny Llama, 512 random sequences of
length U[32,256] whose first 30% is prompt (no loss), batch 8, AdamW lr 1e-4, 1 epoch. Each method runs in its own
process so that peak memory is its own.

    python -m posttrain.bench.peft_methods                     # all five, side by side
    python -m posttrain.bench.peft_methods --methods lora prompt --sequences 64
    python -m posttrain.bench.peft_methods --device cuda --dtype bf16 --shape 1b --methods lora qlora   # on a GPU

`weight MiB` is the bytes of the model's parameters and buffers as loaded (`posttrain.quant.weight_bytes`: a 4-bit
weight counts its packed codes and block constants).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import torch

from posttrain.bench.workload import LORA_TARGETS, bench_model, peak_rss_mib, sft_rows
from posttrain.models import DTYPES

METHODS = ("full", "lora", "qlora", "adapter", "prefix", "prompt")


def peft_config(method: str):
    from posttrain.peft.config import AdapterConfig, LoraConfig, PeftConfig, PrefixConfig, PromptConfig

    table = {
        "full": lambda: PeftConfig(method="none"),
        "lora": lambda: PeftConfig(
            method="lora", lora=LoraConfig(r=16, alpha=32, target_modules=LORA_TARGETS)
        ),
        "qlora": lambda: PeftConfig(
            method="lora", lora=LoraConfig(r=16, alpha=32, target_modules=LORA_TARGETS)
        ),
        "adapter": lambda: PeftConfig(
            method="adapter", adapter=AdapterConfig(kind="houlsby", reduction_factor=16)
        ),
        "prefix": lambda: PeftConfig(method="prefix", prefix=PrefixConfig(num_virtual_tokens=16)),
        "prompt": lambda: PeftConfig(method="prompt", prompt=PromptConfig(num_virtual_tokens=16)),
    }
    return table[method]()


def bench_samples(n: int = 512, seed: int = 0):
    """The sft-lora workload's sequences as Samples: the first 30% of each without loss."""
    from posttrain.data.collate import IGNORE, Sample

    return [Sample(ids, [IGNORE] * p + ids[p:]) for ids, p in sft_rows(n, seed)]


def run(
    method: str,
    sequences: int = 512,
    batch_size: int = 8,
    device: str = "cpu",
    saved: str | None = None,
    dtype: str = "fp32",
) -> dict:
    """One epoch of SFT with `method`; returns trainable params, tokens/s and peak memory. The base is loaded from
    `saved` (a directory the caller wrote, so that no other copy counts in this process; None: the benchmark model
    built here) in `dtype`, quantised to NF4 for QLoRA."""
    from posttrain.config import TrainConfig
    from posttrain.data.collate import SFTBatches
    from posttrain.models import load_model
    from posttrain.objectives.sft import SFTObjective
    from posttrain.peft import apply_peft, count_parameters
    from posttrain.quant import weight_bytes
    from posttrain.train.loop import fit

    quantization = "nf4" if method == "qlora" else "none"
    if saved is None and quantization == "none":
        base = bench_model().to(device, DTYPES[dtype])
    else:
        base = load_model(saved, dtype=dtype, device=device, quantization=quantization)
    weights = weight_bytes(base)
    model = apply_peft(base, peft_config(method))
    trainable, total = count_parameters(model)
    samples = bench_samples(sequences)
    tokens = sum(len(s) for s in samples)
    train = TrainConfig(
        batch_size=batch_size,
        epochs=1.0,
        lr=1e-4,
        schedule="linear",
        progress=False,
        max_length=512,
        mixed_precision="no",
    )
    source = SFTBatches(samples, batch_size, 1, group_by_length=True, seed=train.seed, pad_id=1)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = fit(model, SFTObjective(), source, train, out)
        wall = time.perf_counter() - t0
    row = {
        "method": method,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": 100 * trainable / total,
        "tokens_per_s": tokens / wall,
        "weight_mib": weights / 2**20,
        "wall_s": wall,
        "peak_rss_mib": peak_rss_mib(),
        "final_loss": float(result["final_loss"]),
    }
    if device.startswith("cuda"):
        row["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def run_in_subprocess(
    method: str, sequences: int, device: str, saved: str | None = None, dtype="fp32"
) -> dict:
    code = (
        "import json; from posttrain.bench.peft_methods import run; "
        f"print('RESULT', json.dumps(run({method!r}, {sequences}, device={device!r}, saved={saved!r}, "
        f"dtype={dtype!r})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{method} benchmark failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(line[len("RESULT ") :])


def table(rows: list[dict]) -> str:
    cuda = any("cuda_max_allocated_mib" in r for r in rows)
    head = "| method | trainable params | trainable % | weight MiB | tokens/s | peak RSS MiB |" + (
        " CUDA max MiB |" if cuda else ""
    )
    lines = [head, "|" + " --- |" * (7 if cuda else 6)]
    for r in rows:
        line = (
            f"| {r['method']} | {r['trainable_params']:,} | {r['trainable_pct']:.3f} | {r['weight_mib']:.1f} | "
            f"{r['tokens_per_s']:.0f} | {r['peak_rss_mib']:.0f} |"
        )
        lines.append(line + (f" {r['cuda_max_allocated_mib']:.0f} |" if cuda else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m posttrain.bench.peft_methods", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument(
        "--sequences", type=int, default=512, help="training sequences (512 = the sft-lora workload)"
    )
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="base weights (bf16 on a GPU)")
    ap.add_argument(
        "--shape", default="bench", choices=["bench", "1b"], help="the benchmark model, or a 1B-shaped Llama"
    )
    ap.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as saved:
        if args.shape == "1b":
            from transformers import LlamaConfig, LlamaForCausalLM

            from posttrain.bench.quant_memory import ONE_B

            torch.manual_seed(0)
            LlamaForCausalLM(LlamaConfig(num_hidden_layers=16, **ONE_B)).save_pretrained(saved)
        else:
            bench_model().save_pretrained(saved)  # what QLoRA quantises while loading
        rows = [run_in_subprocess(m, args.sequences, args.device, saved, args.dtype) for m in args.methods]
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
