"""What every command does around the loop: load model + tokenizer (+ adapter, + PEFT), the command body. Saving
and loading final artefacts lives in `posttrain.artifacts` (re-exported here for the commands).

    model, tok = setup_model(cfg)                    # cfg: any RunConfig
    save_final(model, tok, cfg, "runs/sft/final")    # full model dir, or an adapter dir for PEFT runs
    model, tok = load_for_inference("base-dir", adapter="runs/sft/final")
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from posttrain.artifacts import (  # noqa: F401  (re-exported: what the commands import)
    BASE_ADAPTERS_FILE,
    CONFIG_FILE,
    TOKENIZER_FILES,
    _peft,
    base_adapters,
    has_adapters,
    load_for_inference,
    merge_base_adapters,
    save_final,
)
from posttrain.commandline import ArgumentParser
from posttrain.config import ConfigError, RunConfig
from posttrain.models import load_model, load_tokenizer, model_options


def prepare_adapters(model: torch.nn.Module, tokenizer, cfg: RunConfig) -> torch.nn.Module:
    """Load `cfg.adapter` and apply `cfg.peft`.

    With `peft.method=none` a loaded adapter keeps training (base frozen). With another method the loaded LoRA is
    first merged into the base, so that `disable_adapters` (the DPO/PPO reference) gives the adapted model.
    """
    if cfg.adapter:
        from posttrain.artifacts.model import loading

        peft = _peft()
        with loading(cfg.adapter, "adapter"):
            model = merge_base_adapters(model, cfg.adapter)
            peft.load_adapter(model, cfg.adapter, trainable=cfg.peft.method == "none")
        if cfg.peft.method == "none":
            return model
        model = peft.merge_and_unload(model)
    if cfg.peft.method == "none":
        model.requires_grad_(True)
        return model
    return _peft().apply_peft(model, cfg.peft, tokenizer=tokenizer, template=cfg.template)


def trainable_report(model: torch.nn.Module) -> str:
    from posttrain.quant import logical_numel

    params = list(model.parameters())
    trainable, total = (
        sum(p.numel() for p in params if p.requires_grad),
        sum(logical_numel(p) for p in params),
    )
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.2f}"


def setup_model(cfg: RunConfig, verbose: bool = True) -> tuple[torch.nn.Module, object]:
    """Model and tokenizer for training: loaded per `cfg`, adapter loaded, PEFT applied.

    Seeds torch from `train.seed` first, so that adapter initialisation, and every head a command creates after
    this (reward score head, value head), is the same on every run of the same command."""
    from posttrain.modeling import logits_path

    if not cfg.model.name:
        raise ConfigError("model: empty; set it to a model directory or Hub name")
    if cfg.adapter:
        from posttrain.artifacts.model import check_adapter_dir

        check_adapter_dir(cfg.adapter)  # before the base model loads
    torch.manual_seed(cfg.train.seed)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model.name, trust_remote_code=cfg.trust_remote_code)
    model = load_model(
        cfg.model.name,
        dtype=cfg.dtype,
        device=cfg.device,
        trust_remote_code=cfg.trust_remote_code,
        **model_options(cfg.model),
    )
    model = prepare_adapters(model, tokenizer, cfg)
    logits_path(model)  # resolved (and warned about) now, not inside the first loss
    if verbose:
        from posttrain.quant import describe

        for line in (describe(model), trainable_report(model)):
            if line:
                print(line, file=sys.stderr, flush=True)
    return model, tokenizer


def with_model_card(cfg: RunConfig, command: str, result: dict) -> dict:
    """Write `final/README.md` (model card) for a finished run (rank 0); returns `result` unchanged."""
    from posttrain.artifacts import write_model_card
    from posttrain.train.distributed import is_main

    final = Path(cfg.output_dir) / "final"
    if is_main() and final.is_dir():
        write_model_card(final, cfg, command, result)
    return result


def claim(cfg: RunConfig, command: str):
    """`posttrain.run.rundir.claim` on rank 0 (refuse, resume, or move the old run aside), then every rank."""
    from posttrain.run.rundir import claim as claim_dir
    from posttrain.train.distributed import barrier, is_main

    run_dir = claim_dir(cfg, command, main=is_main())
    barrier()
    return run_dir


def config_command(
    cls: type,
    run: Callable[[Any], dict],
    argv: list[str],
    prog: str,
    doc: str,
    check: Callable[[Any], None] | None = None,
) -> int:
    """The body of every training command's `main`: `--config FILE key=value ...`, `--print-config`, run, and
    one JSON line of final metrics (rank 0 only under torchrun). Every user error is one line (`errors.report`):
    config and usage errors (a ConfigError from `check(cfg)` or found during the run, an output_dir holding another
    run) exit 2, run errors (data, NaN, bad values, torn state) exit 1."""
    import argparse

    from posttrain.config import ConfigError, load_config, to_dict
    from posttrain.config_docs import help_text
    from posttrain.errors import report
    from posttrain.train.distributed import is_main

    command = prog.split()[-1]
    p = ArgumentParser(
        prog=prog,
        description=doc,
        epilog=help_text(cls).replace("COMMAND", command),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config", help=f"YAML config file (`posttrain config {command}` writes one with every key)"
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-4 peft.method=lora")
    args = p.parse_args(argv)
    try:
        cfg = load_config(cls, args.config, args.overrides)
        if check is not None:
            check(cfg)
    except ConfigError as e:
        return report(prog, e)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    try:
        result = run(cfg)
    except Exception as e:  # a user error is one line and an exit code; anything else is a bug: traceback
        code = report(prog, e)
        if code is not None:
            return code
        if not isinstance(e, ValueError):
            raise
        print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)  # a bad value deep inside
        return 1
    if is_main():
        print(json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float, str))}))
    return 0
