"""`posttrain eval --config eval.yaml key=value ... [--compare name=dir[:adapter] ...]`

    posttrain eval model=runs/base adapter=runs/sft/final likelihood.data=heldout.jsonl accuracy.data=tasks.jsonl
    posttrain eval --config eval.yaml --compare base=runs/base --compare dpo=runs/base:runs/dpo/final
    posttrain eval accuracy.predictions=preds.jsonl          # score given predictions, no model

Writes report.json, report.md and comparison plots to `output_dir` and prints the headline numbers. Every input is
read and every model scored before anything is written, and each report file is replaced atomically: a failed or
killed eval leaves an existing report as it was (see `posttrain.eval.report.write_report` for the order).
"""

from __future__ import annotations

import argparse
import sys

from posttrain.commandline import ArgumentParser, output_dir
from posttrain.config import ConfigError, load_config
from posttrain.eval.config import EvalConfig, ModelSpec
from posttrain.eval.report import write_report
from posttrain.eval.run import evaluate

__all__ = ["EvalConfig", "ModelSpec", "main", "parse_compare"]


def parse_compare(text: str) -> ModelSpec:
    """'name=dir[:adapter]' (or just 'dir[:adapter]') -> ModelSpec."""
    name, _, rest = text.partition("=") if "=" in text else ("", "", text)
    model, _, adapter = rest.partition(":")
    if not model:
        raise ConfigError(f"--compare {text!r}: expected name=model_dir[:adapter_dir]")
    return ModelSpec(name, model, adapter or None)


def _summary(results: dict) -> str:
    lines = []
    for section, by_model in results["metrics"].items():
        for name, metrics in by_model.items():
            nums = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
            lines.append(f"{section:<11} {name:<16} {nums}")
    for w in results["win_rates"]:
        lines.append(
            f"win rate    {w['a']} vs {w['b']}: {w['win_rate']:.3f} [{w['ci_low']:.3f}, {w['ci_high']:.3f}]"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from posttrain.config_docs import help_text

    parser = ArgumentParser(
        prog="posttrain eval",
        description=__doc__,
        epilog=help_text(EvalConfig).replace("COMMAND", "eval"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file of EvalConfig keys")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=DIR[:ADAPTER]",
        help="another model to evaluate side by side (repeatable)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="key=value overrides, e.g. likelihood.data=heldout.jsonl"
    )
    # intermixed: key=value overrides may come after --compare too
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(EvalConfig, args.config, args.overrides)
    cfg.compare = [*cfg.compare, *(parse_compare(c) for c in args.compare)]
    output_dir(cfg.output_dir, "output_dir")  # refused now, not after every model was scored
    results = evaluate(cfg)
    paths = write_report(results, cfg.output_dir, cfg.plots)
    print(_summary(results))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
