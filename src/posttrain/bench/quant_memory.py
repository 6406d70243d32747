"""Weight memory of a base model as loaded by `posttrain` with each `model.quantization`, measured, for the
benchmark model and for a 1B-shaped Llama (Llama-3.2-1B's shape: hidden 2048, MLP 8192, 16 layers, 32 heads with 8
key-value heads, 128,256-token vocabulary, tied embeddings).

    python -m posttrain.bench.quant_memory              # table
    python -m posttrain.bench.quant_memory --json

The 1B model is not built whole: its weight bytes are linear in the layer count, so the models with 1 and 2 layers
are built, saved, loaded quantised and measured (`posttrain.quant.weight_bytes`), and bytes(16) = bytes(1) + 15 x
(bytes(2) - bytes(1)). Random weights quantise to the same sizes as trained ones (the codes and block constants
have fixed shapes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

import torch

ONE_B = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    tie_word_embeddings=True,
    max_position_embeddings=2048,
)
SETTINGS = (
    ("fp32", "none"),
    ("bf16", "none"),
    ("fp32", "nf4"),
    ("bf16", "nf4"),
    ("fp32", "fp4"),
    ("fp32", "int8"),
)
"""(dtype of what is not quantised, quantization) rows of the table."""


def loaded_bytes(model, dtype: str, quantization: str) -> int:
    from posttrain.models import load_model
    from posttrain.quant import weight_bytes

    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        loaded = load_model(d, dtype=dtype, device="cpu", quantization=quantization)
        return weight_bytes(loaded)


def one_b_bytes(dtype: str, quantization: str) -> int:
    from transformers import LlamaConfig, LlamaForCausalLM

    sizes = []
    for layers in (1, 2):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, **ONE_B))
        sizes.append(loaded_bytes(model, dtype, quantization))
        del model
    return sizes[0] + 15 * (sizes[1] - sizes[0])


def one_b_params() -> int:
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=16, **ONE_B))
    return sum(p.numel() for p in model.parameters())


def measure() -> list[dict]:
    from posttrain.bench.workload import bench_model

    rows = []
    bench = bench_model()
    bench_params = sum(p.numel() for p in bench.parameters())
    for dtype, quantization in SETTINGS:
        rows.append(
            {
                "model": f"bench ({bench_params / 1e6:.1f}M)",
                "dtype": dtype,
                "quantization": quantization,
                "weight_mib": loaded_bytes(bench, dtype, quantization) / 2**20,
            }
        )
    params = one_b_params()
    for dtype, quantization in SETTINGS:
        rows.append(
            {
                "model": f"1B-shaped Llama ({params / 1e9:.2f}B)",
                "dtype": dtype,
                "quantization": quantization,
                "weight_mib": one_b_bytes(dtype, quantization) / 2**20,
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | rest in | quantization | weight MiB | x fp32 |", "| --- | --- | --- | --- | --- |"]
    fp32 = {r["model"]: r["weight_mib"] for r in rows if r["quantization"] == "none" and r["dtype"] == "fp32"}
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['quantization']} | {r['weight_mib']:,.1f} | "
            f"{r['weight_mib'] / fp32[r['model']]:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m posttrain.bench.quant_memory", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = measure()
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
