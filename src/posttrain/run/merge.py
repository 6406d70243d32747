"""`posttrain merge --model BASE --adapter DIR --out OUT [--dtype bf16]`: fold a LoRA adapter into the base.
`posttrain merge --adapter DIR --out OUT --peft`: write the adapter and its chain as one PEFT LoRA adapter instead.

The first writes a plain Hugging Face model directory (safetensors, with the tokenizer and its chat template) that
AutoModelForCausalLM loads without posttrain or PEFT; the adapters merged under DIR during training
(`base_adapters.json`) are merged first, in order, so it is the model that was trained. Merging is done in fp32 and
cast to `--dtype` at the end (auto: the dtype the base was saved in). An adapter trained on a quantised base
(`model.quantization`, QLoRA; read from its posttrain_config.yaml) is merged into that base dequantised, which is
what it was trained against, and the command says so. Only LoRA merges; bottleneck adapters, prefix
and prompt tuning change the computation, not the weights. The second (`posttrain.artifacts.export_adapter`) needs
no base: the chain's LoRAs become one LoRA of the summed rank that `peft.PeftModel.from_pretrained(base, OUT)` loads
with the trained policy's logits.

Both write OUT whole or not at all: everything goes to a hidden sibling `.OUT.tmp-PID`, which replaces OUT only once
it is complete (the old OUT is moved aside to `.OUT.old-PID` for the instant of the swap, then removed). A failed
or killed merge leaves an existing OUT as it was; only a kill between the two renames leaves OUT missing, with the
previous one intact in `.OUT.old-PID`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from posttrain.atomic import atomic_dir
from posttrain.commandline import DTYPE_CHOICES, ArgumentParser, output_dir
from posttrain.errors import UsageError, UserError
from posttrain.models import DTYPES, load_model
from posttrain.peft import adapter_method, load_adapter, merge_and_unload


def merge(
    model_name: str, adapter_dir: str, out: str, dtype: str = "auto", trust_remote_code: bool = False
) -> Path:
    """Load BASE in fp32, add the adapter, merge it, cast, and save to `out`; returns the output directory.

    Adapters the run had merged into its base first (an SFT LoRA under a DPO LoRA; `base_adapters.json`) are
    merged first, in order, so the result is the model that was trained.
    """
    from posttrain.artifacts.model import (
        check_adapter_dir,
        loading,
        merge_base_adapters,
        trained_quantization,
    )
    from posttrain.quant import dequantize

    if dtype != "auto" and dtype not in DTYPES:
        raise UsageError(f"--dtype must be auto | {' | '.join(DTYPES)}, got {dtype!r}")
    check_adapter_dir(adapter_dir)
    quant = trained_quantization(adapter_dir)
    model = load_model(model_name, dtype="fp32", device="cpu", trust_remote_code=trust_remote_code, **quant)
    saved = model.config.dtype
    if quant:  # QLoRA: the adapter learnt a correction to the quantised weights, so it goes onto those
        dequantize(model, torch.float32)
        print(
            f"posttrain merge: {adapter_dir} was trained on a {quant['quantization']}-quantised base; merging into"
            " that base dequantised to fp32 (the weights the adapter was trained against, not the original ones)",
            file=sys.stderr,
        )
    with loading(adapter_dir, "adapter"):
        model = merge_base_adapters(model, adapter_dir)
        load_adapter(model, adapter_dir)
    if adapter_method(model) != "lora":
        raise UserError(
            f"{adapter_dir}: only LoRA adapters can be merged, this one is {adapter_method(model)!r}"
        )
    model = merge_and_unload(model)
    if dtype == "auto":
        target = saved if isinstance(saved, torch.dtype) else DTYPES.get(str(saved), torch.float32)
    else:
        target = DTYPES[dtype]
    model = model.to(target)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        _copy_tokenizer([adapter_dir, model_name], tmp, trust_remote_code)
    return Path(out)


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


def _check_out(out: str, *inputs: str | None) -> None:
    """OUT must not be a file, nor one of the inputs (replacing it would delete what is being merged)."""
    output_dir(out)
    for given in inputs:
        if given and Path(given).exists() and Path(given).resolve() == Path(out).resolve():
            raise UsageError(f"--out {out}: is an input of this merge; write the result somewhere else")


def main(argv: list[str] | None = None) -> int:
    """User errors are raised for `posttrain.cli.main`, which prints them as one line."""
    parser = ArgumentParser(prog="posttrain merge", description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="base model: local directory or Hub name (not needed with --peft)")
    parser.add_argument("--adapter", required=True, help="adapter directory (PEFT format, LoRA)")
    parser.add_argument("--out", required=True, help="output directory for the merged model")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_CHOICES,
        help="auto | fp32 | bf16 | fp16 (default: the base's dtype)",
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub")
    parser.add_argument(
        "--peft", action="store_true", help="write one PEFT LoRA adapter (the whole chain) instead of a model"
    )
    args = parser.parse_args(argv)
    if not args.peft and not args.model:
        parser.error("--model is needed to merge into the weights (or give --peft to export one adapter)")
    _check_out(args.out, args.adapter, args.model)
    if args.peft:
        from posttrain.artifacts import export_adapter
        from posttrain.artifacts.model import check_adapter_dir, loading

        check_adapter_dir(args.adapter)
        with loading(args.adapter, "adapter"):
            export_adapter(args.adapter, args.out)
        print(f"one LoRA adapter for the whole chain written to {args.out}")
        return 0
    out = merge(args.model, args.adapter, args.out, args.dtype, args.trust_remote_code)
    print(f"merged model written to {out}")
    return 0
