"""`posttrain merge --model BASE --adapter DIR --out OUT [--dtype bf16]`: fold a LoRA adapter into the base.
`posttrain merge --adapter DIR --out OUT --peft`: write the adapter and its chain as one PEFT LoRA adapter instead.

The first writes a plain Hugging Face model directory (safetensors, with the tokenizer and its chat template) that
AutoModelForCausalLM loads without posttrain or PEFT; the adapters merged under DIR during training
(`base_adapters.json`) are merged first, in order, so it is the model that was trained. Merging is done in fp32 and
cast to `--dtype` at the end (auto: the dtype the base was saved in). Only LoRA merges; bottleneck adapters, prefix
and prompt tuning change the computation, not the weights. The second (`posttrain.artifacts.export_adapter`) needs
no base: the chain's LoRAs become one LoRA of the summed rank that `peft.PeftModel.from_pretrained(base, OUT)` loads
with the trained policy's logits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from posttrain.models import DTYPES, load_model
from posttrain.peft import adapter_method, load_adapter, merge_and_unload


def merge(
    model_name: str, adapter_dir: str, out: str, dtype: str = "auto", trust_remote_code: bool = False
) -> Path:
    """Load BASE in fp32, add the adapter, merge it, cast, and save to `out`; returns the output directory.

    Adapters the run had merged into its base first (an SFT LoRA under a DPO LoRA; `base_adapters.json`) are
    merged first, in order, so the result is the model that was trained.
    """
    from posttrain.artifacts import merge_base_adapters

    model = load_model(model_name, dtype="fp32", device="cpu", trust_remote_code=trust_remote_code)
    saved = model.config.dtype
    model = merge_base_adapters(model, adapter_dir)
    load_adapter(model, adapter_dir)
    if adapter_method(model) != "lora":
        raise ValueError(
            f"{adapter_dir}: only LoRA adapters can be merged, this one is {adapter_method(model)!r}"
        )
    model = merge_and_unload(model)
    if dtype == "auto":
        target = saved if isinstance(saved, torch.dtype) else DTYPES.get(str(saved), torch.float32)
    elif dtype in DTYPES:
        target = DTYPES[dtype]
    else:
        raise ValueError(f"--dtype must be auto | {' | '.join(DTYPES)}, got {dtype!r}")
    model = model.to(target)
    out_dir = Path(out)
    model.save_pretrained(out_dir, safe_serialization=True)
    _copy_tokenizer([adapter_dir, model_name], out_dir, trust_remote_code)
    return out_dir


def _copy_tokenizer(sources: list[str], out_dir: Path, trust_remote_code: bool) -> None:
    from transformers import AutoTokenizer

    for source in sources:
        try:
            AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code).save_pretrained(
                out_dir
            )
            return
        except (OSError, ValueError, TypeError):
            continue
    print(
        f"posttrain merge: no tokenizer found in {sources}; copy one into {out_dir} yourself", file=sys.stderr
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="posttrain merge", description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="base model: local directory or Hub name (not needed with --peft)")
    parser.add_argument("--adapter", required=True, help="adapter directory (PEFT format, LoRA)")
    parser.add_argument("--out", required=True, help="output directory for the merged model")
    parser.add_argument(
        "--dtype", default="auto", help="auto | fp32 | bf16 | fp16 (default: the base's dtype)"
    )
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument(
        "--peft", action="store_true", help="write one PEFT LoRA adapter (the whole chain) instead of a model"
    )
    args = parser.parse_args(argv)
    if not args.peft and not args.model:
        parser.error("--model is needed to merge into the weights (or give --peft to export one adapter)")
    try:
        if args.peft:
            from posttrain.artifacts import export_adapter

            out = export_adapter(args.adapter, args.out)
            print(f"one LoRA adapter for the whole chain written to {out}")
            return 0
        out = merge(args.model, args.adapter, args.out, args.dtype, args.trust_remote_code)
    except (ValueError, OSError) as e:
        print(f"posttrain merge: {e}", file=sys.stderr)
        return 2
    print(f"merged model written to {out}")
    return 0
